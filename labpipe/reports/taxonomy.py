"""Higher taxonomy (phylum, class, order) of the arthropod families labpipe counts.

Exports need more than the family: Darwin Core occurrences carry ``order``, ``class`` and ``phylum``,
and BOLD's Taxonomy sheet wants Phylum, Class and Order. The classifier only names families, so
this module looks them up in two small tables: family -> order (the families of the built-in
classifier's table ``labpipe/classify/imagenet_families.csv`` plus the families most often found in
bulk samples of soil, litter and trap catches, and every row of the shipped list of family names
``arthropod_families.csv`` beside this module, see :mod:`labpipe.families`) and order -> class
(that list's class where the order is not in the table). A family that is in none is returned with
phylum Arthropoda only; nothing is guessed.

The names follow current catalogues (Bouchard et al. 2011, *ZooKeys* 88, for Coleoptera families;
the Catalogue of Life for the others).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from importlib import resources

__all__ = ["HigherTaxonomy", "higher_taxonomy"]

KINGDOM = "Animalia"
PHYLUM = "Arthropoda"

_ORDER_CLASS: dict[str, str] = {
    **dict.fromkeys(
        [
            "Coleoptera",
            "Hymenoptera",
            "Diptera",
            "Lepidoptera",
            "Hemiptera",
            "Orthoptera",
            "Blattodea",
            "Mantodea",
            "Neuroptera",
            "Odonata",
            "Phasmatodea",
            "Dermaptera",
            "Psocodea",
            "Thysanoptera",
            "Trichoptera",
            "Ephemeroptera",
            "Plecoptera",
            "Archaeognatha",
            "Zygentoma",
            "Mecoptera",
            "Siphonaptera",
            "Raphidioptera",
            "Megaloptera",
            "Embioptera",
            "Strepsiptera",
        ],
        "Insecta",
    ),
    **dict.fromkeys(
        [
            "Araneae",
            "Opiliones",
            "Scorpiones",
            "Pseudoscorpiones",
            "Ixodida",
            "Mesostigmata",
            "Sarcoptiformes",
            "Trombidiformes",
        ],
        "Arachnida",
    ),
    **dict.fromkeys(["Entomobryomorpha", "Poduromorpha", "Symphypleona", "Neelipleona"], "Collembola"),
    **dict.fromkeys(["Isopoda", "Decapoda", "Amphipoda"], "Malacostraca"),
    **dict.fromkeys(["Julida", "Polydesmida", "Glomerida", "Chordeumatida", "Polyxenida"], "Diplopoda"),
    **dict.fromkeys(["Lithobiomorpha", "Geophilomorpha", "Scolopendromorpha"], "Chilopoda"),
    "Protura": "Protura",
    "Diplura": "Diplura",
}
"""Order -> class."""

_FAMILY_ORDER_EXTRA: dict[str, str] = {
    **dict.fromkeys(
        [
            "Carabidae",
            "Staphylinidae",
            "Curculionidae",
            "Chrysomelidae",
            "Coccinellidae",
            "Cerambycidae",
            "Scarabaeidae",
            "Elateridae",
            "Tenebrionidae",
            "Histeridae",
            "Leiodidae",
            "Silphidae",
            "Ptiliidae",
            "Cryptophagidae",
            "Latridiidae",
            "Nitidulidae",
            "Cantharidae",
            "Dytiscidae",
            "Hydrophilidae",
            "Geotrupidae",
            "Lucanidae",
            "Buprestidae",
            "Mordellidae",
            "Anthribidae",
            "Apionidae",
            "Brentidae",
            "Attelabidae",
            "Byrrhidae",
            "Corylophidae",
            "Cucujidae",
            "Dermestidae",
            "Erotylidae",
            "Lampyridae",
            "Melyridae",
            "Monotomidae",
            "Mycetophagidae",
            "Scraptiidae",
            "Scydmaenidae",
            "Throscidae",
            "Zopheridae",
            "Trogidae",
            "Hydraenidae",
            "Clambidae",
            "Cybocephalidae",
            "Anobiidae",
            "Ptinidae",
            "Cleridae",
        ],
        "Coleoptera",
    ),
    **dict.fromkeys(
        [
            "Formicidae",
            "Apidae",
            "Halictidae",
            "Andrenidae",
            "Megachilidae",
            "Colletidae",
            "Vespidae",
            "Ichneumonidae",
            "Braconidae",
            "Diapriidae",
            "Platygastridae",
            "Scelionidae",
            "Ceraphronidae",
            "Figitidae",
            "Mymaridae",
            "Pteromalidae",
            "Encyrtidae",
            "Eulophidae",
            "Bethylidae",
            "Dryinidae",
            "Pompilidae",
            "Crabronidae",
            "Sphecidae",
            "Chrysididae",
            "Tenthredinidae",
        ],
        "Hymenoptera",
    ),
    **dict.fromkeys(
        [
            "Phoridae",
            "Sciaridae",
            "Cecidomyiidae",
            "Chironomidae",
            "Ceratopogonidae",
            "Psychodidae",
            "Mycetophilidae",
            "Muscidae",
            "Syrphidae",
            "Drosophilidae",
            "Sphaeroceridae",
            "Empididae",
            "Dolichopodidae",
            "Tipulidae",
            "Culicidae",
            "Calliphoridae",
            "Sarcophagidae",
            "Tachinidae",
            "Anthomyiidae",
            "Scathophagidae",
            "Chloropidae",
            "Agromyzidae",
            "Bibionidae",
            "Hybotidae",
        ],
        "Diptera",
    ),
    **dict.fromkeys(
        [
            "Aphididae",
            "Cicadellidae",
            "Cicadidae",
            "Delphacidae",
            "Cixiidae",
            "Psyllidae",
            "Miridae",
            "Lygaeidae",
            "Pentatomidae",
            "Anthocoridae",
            "Reduviidae",
            "Coccidae",
            "Aleyrodidae",
            "Rhyparochromidae",
            "Nabidae",
            "Tingidae",
        ],
        "Hemiptera",
    ),
    **dict.fromkeys(
        [
            "Noctuidae",
            "Geometridae",
            "Erebidae",
            "Tortricidae",
            "Crambidae",
            "Pyralidae",
            "Nymphalidae",
            "Pieridae",
            "Lycaenidae",
            "Hesperiidae",
            "Papilionidae",
        ],
        "Lepidoptera",
    ),
    **dict.fromkeys(
        ["Acrididae", "Gryllidae", "Tettigoniidae", "Tetrigidae", "Rhaphidophoridae"], "Orthoptera"
    ),
    **dict.fromkeys(["Forficulidae", "Labiduridae"], "Dermaptera"),
    **dict.fromkeys(["Blattidae", "Ectobiidae", "Blaberidae", "Termitidae", "Rhinotermitidae"], "Blattodea"),
    **dict.fromkeys(["Thripidae", "Phlaeothripidae", "Aeolothripidae"], "Thysanoptera"),
    **dict.fromkeys(
        [
            "Lycosidae",
            "Linyphiidae",
            "Araneidae",
            "Theridiidae",
            "Salticidae",
            "Thomisidae",
            "Gnaphosidae",
            "Clubionidae",
            "Agelenidae",
            "Hahniidae",
            "Dictynidae",
            "Tetragnathidae",
            "Pisauridae",
            "Zodariidae",
            "Theraphosidae",
            "Dysderidae",
            "Oonopidae",
            "Liocranidae",
        ],
        "Araneae",
    ),
    **dict.fromkeys(["Phalangiidae", "Nemastomatidae", "Sclerosomatidae"], "Opiliones"),
    **dict.fromkeys(["Neobisiidae", "Chthoniidae", "Chernetidae"], "Pseudoscorpiones"),
    **dict.fromkeys(["Ixodidae", "Argasidae"], "Ixodida"),
    **dict.fromkeys(["Entomobryidae", "Isotomidae", "Tomoceridae", "Orchesellidae"], "Entomobryomorpha"),
    **dict.fromkeys(["Hypogastruridae", "Neanuridae", "Onychiuridae", "Tullbergiidae"], "Poduromorpha"),
    **dict.fromkeys(["Sminthuridae", "Dicyrtomidae", "Katiannidae", "Bourletiellidae"], "Symphypleona"),
    "Neelidae": "Neelipleona",
    **dict.fromkeys(
        ["Oniscidae", "Porcellionidae", "Armadillidiidae", "Trichoniscidae", "Philosciidae"], "Isopoda"
    ),
    "Julidae": "Julida",
    "Polydesmidae": "Polydesmida",
    "Glomeridae": "Glomerida",
    "Lithobiidae": "Lithobiomorpha",
    **dict.fromkeys(["Geophilidae", "Linotaeniidae"], "Geophilomorpha"),
    "Chrysopidae": "Neuroptera",
    "Hemerobiidae": "Neuroptera",
    "Mantidae": "Mantodea",
    "Liposcelididae": "Psocodea",
}
"""Family -> order, beyond the built-in classifier's table."""


@dataclass(frozen=True)
class HigherTaxonomy:
    """The ranks above a family; ``None`` where the family is not in labpipe's tables."""

    kingdom: str
    phylum: str
    class_: str | None
    order: str | None
    family: str


@cache
def _family_order() -> dict[str, str]:
    from labpipe.families import shipped_families

    table = dict(_FAMILY_ORDER_EXTRA)
    text = resources.files("labpipe.classify").joinpath("imagenet_families.csv").read_text(encoding="utf-8")
    for row in csv.DictReader(text.splitlines()):
        if row.get("family") and row.get("order"):
            table.setdefault(row["family"], row["order"])
    for shipped in shipped_families():
        table.setdefault(shipped.family, shipped.order)
    return table


@cache
def _order_class() -> dict[str, str]:
    from labpipe.families import shipped_families

    table = dict(_ORDER_CLASS)
    for shipped in shipped_families():
        table.setdefault(shipped.order, shipped.class_)
    return table


def higher_taxonomy(family: str) -> HigherTaxonomy:
    """Kingdom, phylum, class and order of ``family`` (an arthropod family name).

    >>> higher_taxonomy("Carabidae").order, higher_taxonomy("Carabidae").class_
    ('Coleoptera', 'Insecta')
    >>> higher_taxonomy("Unknownidae").order is None
    True
    """
    family = family.strip()
    order = _family_order().get(family)
    return HigherTaxonomy(
        kingdom=KINGDOM,
        phylum=PHYLUM,
        class_=_order_class().get(order) if order else None,
        order=order,
        family=family,
    )
