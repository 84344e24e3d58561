"""Darwin Core Archive export for GBIF: sample events as the core, family occurrences with counts.

The archive (a zip) holds:

``event.txt``
    The core (``http://rs.tdwg.org/dwc/terms/Event``): one row per sample; ``eventID`` is the sample
    id (with ``[dwca] id_prefix``), with date, coordinates (WGS84), locality (site), habitat,
    sampling protocol (method) and remarks (fraction, notes). Samples with no accepted specimen are
    events too: the sample was examined. Each event also says what its occurrences leave out, so a
    reader summing ``individualCount`` knows it is not every specimen imaged: ``eventRemarks`` in words
    and ``dynamicProperties`` as JSON give the specimens detected, counted, rejected by the
    classifier (no family reported), not classified yet and excluded as not a specimen, and the
    classifier version(s) that counted them.
``occurrence.txt``
    An extension (``http://rs.tdwg.org/dwc/terms/Occurrence``) linked by ``eventID``: one row per
    sample x family with an accepted count (see :mod:`labpipe.reports.counts`), ``occurrenceID``
    ``<eventID>:<family>``, ``individualCount`` and ``organismQuantity`` (individuals),
    ``taxonRank`` family with the higher ranks of :mod:`labpipe.reports.taxonomy`, ``identifiedBy``
    naming the classifier model version(s) (and ``labpipe verification`` where a person verified),
    ``identificationRemarks`` with the threshold and the verified share, and ``occurrenceRemarks``
    with the expected count and its 95 % interval. No absence records are written: the classifier
    cannot vouch that a family it does not know was absent.
``meta.xml``
    The archive descriptor (DwC text guidelines): tab-separated UTF-8, one header line.
``eml.xml``
    Dataset metadata in GBIF's EML profile (EML 2.1.1): title, creator, publisher, licence and rights
    holder, geographic and temporal coverage, contact and a method description naming every
    classifier version behind the counts and the specimens left out of the occurrences; from
    ``[dwca]``. :func:`metadata_warnings` names what is unset (rights holder, licence, contact).

Images whose sample is unknown are left out (an event needs a sample) and counted in the result.
The term mapping is the pure functions :func:`event_record` and :func:`occurrence_records`.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import uuid
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from labpipe.config import DwcaConfig
from labpipe.db.models import Sample
from labpipe.queries.calls import CountFilter
from labpipe.reports.counts import SampleCounts, compute_counts
from labpipe.reports.taxonomy import higher_taxonomy

__all__ = [
    "DWC",
    "EVENT_TERMS",
    "OCCURRENCE_TERMS",
    "eml_xml",
    "event_record",
    "export_dwca",
    "meta_xml",
    "metadata_warnings",
    "occurrence_records",
    "write_dwca",
]

DWC = "http://rs.tdwg.org/dwc/terms/"
EVENT_ROW_TYPE = DWC + "Event"
OCCURRENCE_ROW_TYPE = DWC + "Occurrence"
EVENT_TERMS = [
    "eventID",
    "eventDate",
    "decimalLatitude",
    "decimalLongitude",
    "geodeticDatum",
    "countryCode",
    "locality",
    "habitat",
    "samplingProtocol",
    "eventRemarks",
    "dynamicProperties",
]
OCCURRENCE_TERMS = [
    "occurrenceID",
    "eventID",
    "basisOfRecord",
    "occurrenceStatus",
    "individualCount",
    "organismQuantity",
    "organismQuantityType",
    "scientificName",
    "kingdom",
    "phylum",
    "class",
    "order",
    "family",
    "taxonRank",
    "recordedBy",
    "identifiedBy",
    "identificationRemarks",
    "occurrenceRemarks",
]
EVENT_FILE = "event.txt"
OCCURRENCE_FILE = "occurrence.txt"
_EML_NS = "eml://ecoinformatics.org/eml-2.1.1"
_EML_SCHEMA = "eml://ecoinformatics.org/eml-2.1.1 http://rs.gbif.org/schema/eml-gbif-profile/1.1/eml.xsd"


def _event_id(sample_id: str, cfg: DwcaConfig) -> str:
    return f"{cfg.id_prefix}{sample_id}"


def _left_out(counts: SampleCounts) -> tuple[str, dict[str, Any]]:
    """What the event's occurrences hold and leave out, in words and as JSON-ready numbers."""
    counted = sum(counts.families.values())
    detected = counts.specimens + counts.unclassified + counts.excluded
    models = ", ".join(counts.model_versions) or "none"
    words = (
        f"{detected} specimen(s) detected: {counted} counted in this event's occurrences, "
        f"{counts.rejected} rejected by the classifier (family not reported), "
        f"{counts.unclassified} not classified yet, {counts.excluded} excluded as not a specimen; "
        f"classifier version(s): {models}"
    )
    if counts.multiple:
        words += f"; {counts.multiple} box(es) held several specimens (counts are lower bounds)"
    numbers = {
        "specimensDetected": detected,
        "specimensCounted": counted,
        "specimensRejected": counts.rejected,
        "specimensUnclassified": counts.unclassified,
        "specimensExcluded": counts.excluded,
        "boxesWithSeveralSpecimens": counts.multiple,
        "classifierVersions": list(counts.model_versions),
    }
    return words, numbers


def event_record(sample: Sample, cfg: DwcaConfig, counts: SampleCounts | None = None) -> dict[str, Any]:
    """The Event core row of one sample (term -> value; empty string where unknown); with ``counts``,
    the remarks and dynamic properties say how many specimens its occurrences leave out.

    >>> from labpipe.config import DwcaConfig
    >>> event_record(Sample(id="S1", site="Troodos", latitude=34.9, longitude=32.8), DwcaConfig())["locality"]
    'Troodos'
    >>> c = SampleCounts("S1", specimens=5, rejected=2, unclassified=1, families={"Carabidae": 3})
    >>> event_record(Sample(id="S1"), DwcaConfig(), c)["eventRemarks"][:80]
    "6 specimen(s) detected: 3 counted in this event's occurrences, 2 rejected by the"
    """
    has_coordinates = sample.latitude is not None and sample.longitude is not None
    parts = [f"fraction: {sample.fraction}" if sample.fraction else "", sample.notes or ""]
    dynamic = ""
    if counts is not None:
        words, numbers = _left_out(counts)
        parts.append(words)
        dynamic = json.dumps(numbers, separators=(",", ":"))
    remarks = "; ".join(t for t in parts if t)
    return {
        "eventID": _event_id(sample.id, cfg),
        "eventDate": sample.collection_date.isoformat() if sample.collection_date else "",
        "decimalLatitude": sample.latitude if has_coordinates else "",
        "decimalLongitude": sample.longitude if has_coordinates else "",
        "geodeticDatum": "WGS84" if has_coordinates else "",
        "countryCode": cfg.country_code,
        "locality": sample.site or "",
        "habitat": sample.habitat or "",
        "samplingProtocol": sample.method or "",
        "eventRemarks": remarks,
        "dynamicProperties": dynamic,
    }


def occurrence_records(
    counts: SampleCounts, cfg: DwcaConfig, threshold: float | None = None, recorded_by: str | None = None
) -> list[dict[str, Any]]:
    """One Occurrence row per family with an accepted count in ``counts`` (pure).

    >>> from labpipe.config import DwcaConfig
    >>> c = SampleCounts("S1", families={"Carabidae": 3}, family_models={"Carabidae": ["m@w1"]})
    >>> row = occurrence_records(c, DwcaConfig())[0]
    >>> row["occurrenceID"], row["individualCount"], row["order"], row["identifiedBy"]
    ('S1:Carabidae', 3, 'Coleoptera', 'labpipe m@w1')
    """
    if counts.sample is None:
        return []
    event_id = _event_id(counts.sample, cfg)
    rule = (
        f"acceptance threshold {threshold:g}" if threshold is not None else "the classifier's stored decision"
    )
    out = []
    for family, n in counts.families.items():
        if n <= 0:
            continue
        taxonomy = higher_taxonomy(family)
        models = counts.family_models.get(family, [])
        verified = counts.family_verified.get(family, 0)
        identified_by = [f"labpipe {m}" for m in models] + (["labpipe verification"] if verified else [])
        remarks = (
            f"Family identified from specimen images by labpipe (model {', '.join(models) or 'none'}; "
            f"{rule}); {verified} of {n} verified by a person"
        )
        if counts.mixed_models:
            mixed = ", ".join(counts.model_versions)
            remarks += f"; WARNING: this sample's counts mix classifier versions ({mixed})"
        expected = counts.expected.get(family)
        occurrence_remarks = (
            f"expected count {expected.mean:.2f} (95% interval {expected.low}-{expected.high}) "
            "from calibrated probabilities"
            if expected is not None
            else ""
        )
        out.append(
            {
                "occurrenceID": f"{event_id}:{family}",
                "eventID": event_id,
                "basisOfRecord": cfg.basis_of_record,
                "occurrenceStatus": "present",
                "individualCount": n,
                "organismQuantity": n,
                "organismQuantityType": "individuals",
                "scientificName": family,
                "kingdom": taxonomy.kingdom,
                "phylum": taxonomy.phylum,
                "class": taxonomy.class_ or "",
                "order": taxonomy.order or "",
                "family": family,
                "taxonRank": "family",
                "recordedBy": recorded_by or "",
                "identifiedBy": " | ".join(identified_by),
                "identificationRemarks": remarks,
                "occurrenceRemarks": occurrence_remarks,
            }
        )
    return out


def meta_xml() -> str:
    """The archive descriptor for ``event.txt`` (core) and ``occurrence.txt`` (extension)."""
    ET.register_namespace("", "http://rs.tdwg.org/dwc/text/")
    ns = "{http://rs.tdwg.org/dwc/text/}"
    archive = ET.Element(ns + "archive", {"metadata": "eml.xml"})
    for tag, row_type, location, terms, key, key_index in (
        ("core", EVENT_ROW_TYPE, EVENT_FILE, EVENT_TERMS, "id", 0),
        ("extension", OCCURRENCE_ROW_TYPE, OCCURRENCE_FILE, OCCURRENCE_TERMS, "coreid", 1),
    ):
        element = ET.SubElement(
            archive,
            ns + tag,
            {
                "encoding": "UTF-8",
                "fieldsTerminatedBy": "\\t",
                "linesTerminatedBy": "\\n",
                "fieldsEnclosedBy": "",
                "ignoreHeaderLines": "1",
                "rowType": row_type,
            },
        )
        files = ET.SubElement(element, ns + "files")
        ET.SubElement(files, ns + "location").text = location
        ET.SubElement(element, ns + key, {"index": str(key_index)})
        for i, term in enumerate(terms):
            ET.SubElement(element, ns + "field", {"index": str(i), "term": DWC + term})
    ET.indent(archive)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(archive, encoding="unicode") + "\n"


def _party(parent: ET.Element, tag: str, name: str, email: str) -> None:
    party = ET.SubElement(parent, tag)
    ET.SubElement(party, "organizationName").text = name or "Not specified"
    if email:
        ET.SubElement(party, "electronicMailAddress").text = email


def metadata_warnings(cfg: DwcaConfig) -> list[str]:
    """What a publisher must set before the archive goes to GBIF, one sentence each (empty: ready).

    >>> metadata_warnings(DwcaConfig(rights_holder="Lab", contact_email="a@b.org"))
    []
    >>> metadata_warnings(DwcaConfig(license=""))[1]
    'no licence: set [dwca] license (GBIF accepts CC0, CC BY and CC BY-NC)'
    """
    out = []
    if not cfg.rights_holder.strip():
        out.append("no rights holder: set [dwca] rights_holder (who holds the rights to these data)")
    if not cfg.license.strip():
        out.append("no licence: set [dwca] license (GBIF accepts CC0, CC BY and CC BY-NC)")
    if not (cfg.contact_email.strip() or cfg.contact_name.strip()):
        out.append(
            "no contact: set [dwca] contact_name and contact_email (who answers questions on the data)"
        )
    return out


def eml_xml(
    cfg: DwcaConfig,
    samples: Sequence[Sample],
    today: dt.date | None = None,
    model_versions: Sequence[str] = (),
    left_out: dict[str, int] | None = None,
) -> str:
    """Dataset metadata (GBIF EML profile) covering ``samples``' places and dates, naming the
    classifier ``model_versions`` behind the counts and the specimens ``left_out`` of the
    occurrences (``rejected``, ``unclassified``, ``excluded``: totals over the events)."""
    today = today or dt.date.today()
    ET.register_namespace("eml", _EML_NS)
    ET.register_namespace("xsi", "http://www.w3.org/2001/XMLSchema-instance")
    root = ET.Element(
        f"{{{_EML_NS}}}eml",
        {
            "packageId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"labpipe:{cfg.id_prefix}:{cfg.title}")),
            "system": "http://gbif.org",
            "scope": "system",
            "{http://www.w3.org/XML/1998/namespace}lang": cfg.language,
            "{http://www.w3.org/2001/XMLSchema-instance}schemaLocation": _EML_SCHEMA,
        },
    )
    dataset = ET.SubElement(root, "dataset")
    ET.SubElement(
        dataset, "title", {"{http://www.w3.org/XML/1998/namespace}lang": cfg.language}
    ).text = cfg.title
    _party(dataset, "creator", cfg.publisher, cfg.contact_email)
    _party(dataset, "metadataProvider", cfg.publisher, cfg.contact_email)
    ET.SubElement(dataset, "pubDate").text = today.isoformat()
    ET.SubElement(dataset, "language").text = cfg.language
    abstract = ET.SubElement(dataset, "abstract")
    ET.SubElement(abstract, "para").text = (
        f"Per-sample family counts of {len(samples)} bulk arthropod sample(s), from plate images of "
        "the samples' specimens: each specimen was detected, cropped and classified to family by "
        "labpipe, with uncertain specimens rejected and human verifications taking precedence."
    )
    rights = ET.SubElement(dataset, "intellectualRights")
    para = ET.SubElement(rights, "para")
    para.text = "This work is licensed under "
    link = ET.SubElement(para, "ulink", {"url": cfg.license})
    ET.SubElement(link, "citetitle").text = cfg.license
    link.tail = "."
    if cfg.rights_holder.strip():
        ET.SubElement(rights, "para").text = f"Rights holder: {cfg.rights_holder.strip()}."
    coverage = ET.SubElement(dataset, "coverage")
    lats = [s.latitude for s in samples if s.latitude is not None and s.longitude is not None]
    lons = [s.longitude for s in samples if s.latitude is not None and s.longitude is not None]
    if lats:
        geo = ET.SubElement(coverage, "geographicCoverage")
        ET.SubElement(geo, "geographicDescription").text = "Sampling sites: " + ", ".join(
            sorted({s.site for s in samples if s.site}) or ["not named"]
        )
        box = ET.SubElement(geo, "boundingCoordinates")
        for tag, value in (
            ("westBoundingCoordinate", min(lons)),
            ("eastBoundingCoordinate", max(lons)),
            ("northBoundingCoordinate", max(lats)),
            ("southBoundingCoordinate", min(lats)),
        ):
            ET.SubElement(box, tag).text = f"{value:.6f}"
    dates = sorted(s.collection_date for s in samples if s.collection_date)
    if dates:
        temporal = ET.SubElement(coverage, "temporalCoverage")
        span = ET.SubElement(temporal, "rangeOfDates")
        ET.SubElement(ET.SubElement(span, "beginDate"), "calendarDate").text = dates[0].isoformat()
        ET.SubElement(ET.SubElement(span, "endDate"), "calendarDate").text = dates[-1].isoformat()
    taxonomic = ET.SubElement(coverage, "taxonomicCoverage")
    ET.SubElement(taxonomic, "generalTaxonomicCoverage").text = "Arthropoda, identified to family"
    rank = ET.SubElement(taxonomic, "taxonomicClassification")
    ET.SubElement(rank, "taxonRankName").text = "phylum"
    ET.SubElement(rank, "taxonRankValue").text = "Arthropoda"
    if not len(coverage):
        dataset.remove(coverage)
    contact = ET.SubElement(dataset, "contact")
    if cfg.contact_name:
        ET.SubElement(ET.SubElement(contact, "individualName"), "surName").text = cfg.contact_name
    ET.SubElement(contact, "organizationName").text = cfg.publisher or "Not specified"
    if cfg.contact_email:
        ET.SubElement(contact, "electronicMailAddress").text = cfg.contact_email
    methods = ET.SubElement(dataset, "methods")
    step = ET.SubElement(ET.SubElement(methods, "methodStep"), "description")
    ET.SubElement(step, "para").text = (
        "Specimens of each bulk sample were spread on Petri dishes and imaged; labpipe detected each "
        "specimen, cut a square crop from full resolution and classified it to family with calibrated "
        "probabilities. A specimen counts for a family when accepted at the stated threshold or "
        "verified by a person; rejected specimens are not reported as occurrences."
    )
    versions = ", ".join(model_versions) or "none (every family was verified by a person)"
    ET.SubElement(step, "para").text = f"Classifier version(s) behind the counts: {versions}."
    if left_out is not None:
        ET.SubElement(step, "para").text = (
            f"Not in any occurrence: {left_out.get('rejected', 0)} specimen(s) rejected by the classifier, "
            f"{left_out.get('unclassified', 0)} not classified yet and {left_out.get('excluded', 0)} "
            "excluded as not a specimen; each event's eventRemarks and dynamicProperties give its own."
        )
    sampling = ET.SubElement(methods, "sampling")
    ET.SubElement(sampling, "studyExtent").append(_description("Bulk samples listed as events."))
    ET.SubElement(sampling, "samplingDescription").append(_para("See each event's samplingProtocol."))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _para(text: str) -> ET.Element:
    para = ET.Element("para")
    para.text = text
    return para


def _description(text: str) -> ET.Element:
    description = ET.Element("description")
    description.append(_para(text))
    return description


def _tsv(rows: list[dict[str, Any]], terms: list[str]) -> str:
    def cell(value: Any) -> str:
        text = "" if value is None else str(value)
        return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")

    buffer = io.StringIO()
    buffer.write("\t".join(terms) + "\n")
    for row in rows:
        buffer.write("\t".join(cell(row.get(t)) for t in terms) + "\n")
    return buffer.getvalue()


def write_dwca(
    path: Path,
    counts: Sequence[SampleCounts],
    samples: dict[str, Sample],
    cfg: DwcaConfig,
    threshold: float | None = None,
    today: dt.date | None = None,
) -> dict[str, Any]:
    """Write the Darwin Core Archive to ``path`` (a ``.zip``); returns what it holds.

    ``counts``: from :func:`labpipe.reports.counts.compute_counts`; ``samples``: the sample rows
    by id (for the event columns).
    """
    events: list[dict[str, Any]] = []
    occurrences: list[dict[str, Any]] = []
    used: list[Sample] = []
    unassigned = 0
    versions: set[str] = set()
    per_sample: dict[str, dict[str, Any]] = {}
    for entry in counts:
        if entry.sample is None:
            unassigned += entry.specimens
            continue
        sample = samples.get(entry.sample) or Sample(id=entry.sample)
        used.append(sample)
        events.append(event_record(sample, cfg, entry))
        occurrences += occurrence_records(entry, cfg, threshold, recorded_by=sample.collector)
        versions.update(entry.model_versions)
        per_sample[entry.sample] = {
            "counted": sum(entry.families.values()),
            "rejected": entry.rejected,
            "unclassified": entry.unclassified,
            "excluded": entry.excluded,
            "model_versions": list(entry.model_versions),
        }
    left_out = {k: sum(v[k] for v in per_sample.values()) for k in ("rejected", "unclassified", "excluded")}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("meta.xml", meta_xml())
        archive.writestr("eml.xml", eml_xml(cfg, used, today, sorted(versions), left_out))
        archive.writestr(EVENT_FILE, _tsv(events, EVENT_TERMS))
        archive.writestr(OCCURRENCE_FILE, _tsv(occurrences, OCCURRENCE_TERMS))
    tmp.replace(path)
    return {
        "path": str(path),
        "events": len(events),
        "occurrences": len(occurrences),
        "individuals": sum(int(o["individualCount"]) for o in occurrences),
        "unassigned_specimens_left_out": unassigned,
        "model_versions": sorted(versions),
        **{f"{k}_specimens": v for k, v in left_out.items()},
        "per_sample": per_sample,
        "warnings": metadata_warnings(cfg),
    }


def export_dwca(
    session: Session,
    path: Path,
    cfg: DwcaConfig,
    flt: CountFilter | None = None,
    threshold: float | None = None,
    today: dt.date | None = None,
) -> dict[str, Any]:
    """Count (with ``flt`` and ``threshold``) and write the archive to ``path``."""
    counts = compute_counts(session, flt, threshold=threshold)
    ids = [c.sample for c in counts if c.sample is not None]
    samples = {s.id: s for s in session.scalars(select(Sample).where(Sample.id.in_(ids)))}
    return write_dwca(path, counts, samples, cfg, threshold, today)
