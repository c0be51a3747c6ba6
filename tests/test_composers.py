import pytest

from tokenization import MusicTokenizer
from tokenization.composers import UNKNOWN, canonical_composer, composer_from_filename


@pytest.mark.parametrize(
    ("filename", "composer"),
    [
        ("data/rimsky-korsakov-flight_of_the_bumblebee.mid", "rimsky-korsakov"),
        ("coleridge-taylor-demande_et_reponse.mid", "coleridge-taylor"),
        ("saint-saens-le_cygne.mid", "saint-saens"),
        ("vaughan-williams-fantasia.mid", "vaughan-williams"),
        ("vaughan-linden_lea_a_dorset_song.mid", "vaughan-williams"),
        ("haendel-messiah_oratorio_hwv056-mesiah10.mid", "handel"),
        ("handel-air_hwv_471.mid", "handel"),
        ("mendelsonn-song_without_words.mid", "mendelssohn"),
        ("mendelssohn-kinderstuck_opus_72_no_2.mid", "mendelssohn"),
        ("unknown_artist-a_h-some_piece.mid", UNKNOWN),
        ("bach-bwv001-_400_chorales-064500b.mid", "bach"),
        ("no_composer_here.mid", UNKNOWN),
    ],
)
def test_composer_from_classical_file_names(filename, composer):
    assert composer_from_filename(filename) == composer


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("Bach", "bach"),
        ("  Haendel ", "handel"),
        ("Saint-Saëns", "saint-saens"),
        ("Vaughan Williams", "vaughan-williams"),
        ("The Beatles", "the_beatles"),
        ("Don't Stop, Inc.", "don_t_stop_inc"),
        ("", UNKNOWN),
        (None, UNKNOWN),
        ("unknown_artist", UNKNOWN),
    ],
)
def test_canonical_names(name, canonical):
    assert canonical_composer(name) == canonical


# Every composer prefix of the classical dataset's file names (`<prefix>-<piece>.mid`, 4,489 files
# of drengskapur/midi-classical-music), and the labels that differ from the prefix: one person
# under two spellings merged, a person's abbreviated name made whole. Reviewed by hand: `cpe_bach`
# (C. P. E. Bach), `holst_m`, `durand_e` / `durand_ma`, `straus` (Oscar) / `strauss_j` (Johann) are
# other people than `bach`, `holst`, each other and `strauss`; `german` is Edward German.
LISTED = """
albeniz alkan ambroise arensky arndt bacewitz bach barber bartelet bartok becker beethoven bellini berlin
bernstein bizet borodin botsford brahms burgmuller busoni busser buxehude chabrier chaminade chasins chopin
clarke clementi coates coleridge-taylor cons copland couperin cpe_bach cramer czerny czibulka debussy
diabelli durand_e durand_ma dussek dvorak faure field finck flotow franck frescobaldi friedman fucick
ganne german gershwin ginastera gottschalk grainger grieg griffes haendel handel haydn heidrich heller
hemery herold hiller holst holst_m hummel ivanovici jakobowski jensen joplin komzak kuhlau lange laurent
lavallee le_thiere lecuona lemire liszt lyssenko macbeth maccunn maier massenet mehul mendelsonn
mendelssohn meyerbeer morel moszkowski mozart mussorgski nicolai pachelbel paderewski paganini paradisi
peterson pollen poulenc pridhan prokofiev rachmaninov raff ravel reger reinecke resch rimsky-korsakov
rossini rothchild saint-saens sarasate satie scarlatti schoenberg schubert schumann shostakovich sibelius
sinding skriabin straus strauss_j stravinsky sudds sullivan suppe swinstead tarrega taube tchaikovsky
thomas unknown_artist vaughan vivaldi wagner wolf
"""
PREFIXES = LISTED.split()
RELABELLED = {
    "buxehude": "buxtehude",
    "haendel": "handel",
    "mendelsonn": "mendelssohn",
    "mussorgski": "mussorgsky",
    "rachmaninov": "rachmaninoff",
    "skriabin": "scriabin",
    "unknown_artist": UNKNOWN,
    "vaughan": "vaughan-williams",  # Vaughan Williams: folk songs from Somerset, Linden Lea
}


def test_every_label_of_the_classical_dataset_is_one_person():
    labels = {prefix: composer_from_filename(f"data/{prefix}-a_piece.mid") for prefix in PREFIXES}
    assert labels == {prefix: RELABELLED.get(prefix, prefix) for prefix in PREFIXES}
    assert len(PREFIXES) == 143 and len(set(labels.values())) == 141  # Handel and Mendelssohn merged


def test_a_tokenizer_made_before_a_merge_keeps_its_spelling():
    old = MusicTokenizer(composers=["vaughan"])  # as tokenizers were before vaughan -> vaughan-williams
    old._conditions[1] = ("composer", "vaughan")
    assert old.condition_name("Vaughan Williams") == "vaughan" == old.condition_name("vaughan")
    assert old.composer_token_id("vaughan-williams") == old.base_vocab_size + 1
