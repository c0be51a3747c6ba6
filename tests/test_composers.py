import pytest

from tokenization.composers import UNKNOWN, canonical_composer, composer_from_filename


@pytest.mark.parametrize(
    ("filename", "composer"),
    [
        ("data/rimsky-korsakov-flight_of_the_bumblebee.mid", "rimsky-korsakov"),
        ("coleridge-taylor-demande_et_reponse.mid", "coleridge-taylor"),
        ("saint-saens-le_cygne.mid", "saint-saens"),
        ("vaughan-williams-fantasia.mid", "vaughan-williams"),
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
        ("The Beatles", "the_beatles"),
        ("Don't Stop, Inc.", "don_t_stop_inc"),
        ("", UNKNOWN),
        (None, UNKNOWN),
        ("unknown_artist", UNKNOWN),
    ],
)
def test_canonical_names(name, canonical):
    assert canonical_composer(name) == canonical
