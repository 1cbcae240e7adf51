"""aeutils.annotations: ASAP/CAMELYON16 XML parsing, rasterisation, tumour fractions, errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aeutils.annotations import annotation_for_slide, read_asap_xml
from aeutils.errors import AnnotationError
from synthetic import asap_xml, rect_polygon


def test_groups(tmp_path: Path) -> None:
    p = tmp_path / "a.xml"
    text = asap_xml([rect_polygon(0, 0, 10, 10)], [rect_polygon(2, 2, 4, 4)])
    text = text.replace("</Annotations>", """<Annotation Name="t2" Type="Polygon" PartOfGroup="Tumor">
        <Coordinates><Coordinate Order="0" X="20" Y="20"/><Coordinate Order="1" X="30" Y="20"/>
        <Coordinate Order="2" X="30" Y="30"/></Coordinates></Annotation>
        <Annotation Name="e2" Type="Polygon" PartOfGroup="Exclusion">
        <Coordinates><Coordinate Order="0" X="21" Y="21"/><Coordinate Order="1" X="22" Y="21"/>
        <Coordinate Order="2" X="22" Y="22"/></Coordinates></Annotation>
        <Annotation Name="other" Type="Polygon" PartOfGroup="None">
        <Coordinates><Coordinate Order="0" X="0" Y="0"/><Coordinate Order="1" X="1" Y="0"/>
        <Coordinate Order="2" X="1" Y="1"/></Coordinates></Annotation>
        <Annotation Name="dot" Type="Dot" PartOfGroup="_1"><Coordinates><Coordinate Order="0" X="5" Y="5"/></Coordinates></Annotation>
        </Annotations>""")
    p.write_text(text)
    ann = read_asap_xml(p)
    assert len(ann.tumour) == 2 and len(ann.exclusion) == 2
    np.testing.assert_array_equal(ann.tumour[0], [[0, 0], [10, 0], [10, 10], [0, 10]])


def test_coordinate_order_is_respected(tmp_path: Path) -> None:
    p = tmp_path / "o.xml"
    p.write_text(asap_xml([rect_polygon(0, 0, 10, 10)]).replace('Order="1"', 'Order="9"'))
    poly = read_asap_xml(p).tumour[0]
    np.testing.assert_array_equal(poly[-1], [10, 0])


def test_tumour_fractions_with_exclusion(tmp_path: Path) -> None:
    p = tmp_path / "t.xml"
    p.write_text(asap_xml([rect_polygon(0, 0, 200, 100)], [rect_polygon(0, 0, 100, 50)]))
    tm = read_asap_xml(p).mask((400, 200), min_scale=0.5)
    xs = np.array([0, 100, 200, 150])
    ys = np.array([0, 0, 0, 0])
    np.testing.assert_allclose(tm.fractions(xs, ys, 100, 100), [0.5, 1.0, 0.0, 0.5])


def test_malformed_xml(tmp_path: Path) -> None:
    p = tmp_path / "bad.xml"
    p.write_text("<ASAP_Annotations><Annotations><Annotation")
    with pytest.raises(AnnotationError, match=r"bad\.xml: malformed XML"):
        read_asap_xml(p)


def test_wrong_root_and_bad_coordinates(tmp_path: Path) -> None:
    p = tmp_path / "svg.xml"
    p.write_text("<svg></svg>")
    with pytest.raises(AnnotationError, match=r"svg\.xml: not an ASAP annotation file"):
        read_asap_xml(p)
    q = tmp_path / "nan.xml"
    q.write_text(asap_xml([rect_polygon(0, 0, 10, 10)]).replace('X="10"', 'X="ten"', 1))
    with pytest.raises(AnnotationError, match=r"nan\.xml: annotation 'Annotation 0' has a coordinate without numeric"):
        read_asap_xml(q)
    r = tmp_path / "two.xml"
    r.write_text(asap_xml([[(0, 0), (1, 1)]]))
    with pytest.raises(AnnotationError, match="needs 3"):
        read_asap_xml(r)


def test_annotation_for_slide_file_or_folder(tmp_path: Path) -> None:
    (tmp_path / "tumor_001.xml").write_text(asap_xml([rect_polygon(0, 0, 10, 10)]))
    assert len(annotation_for_slide(tmp_path, "tumor_001").tumour) == 1
    none = annotation_for_slide(tmp_path, "normal_001")  # no XML in the folder: no tumour
    assert none.tumour == [] and none.path is None
    assert len(annotation_for_slide(tmp_path / "tumor_001.xml", "anything").tumour) == 1
    with pytest.raises(AnnotationError, match=r"missing\.xml: no such annotation"):
        annotation_for_slide(tmp_path / "missing.xml", "x")
