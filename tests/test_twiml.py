"""Everything that goes into TwiML is escaped: the XML parses back to exactly the text."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from hypothesis import given
from hypothesis import strategies as st
from webhook import twiml

# XML 1.0 cannot carry most control characters at all; everything else must round-trip.
xml_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from("\n\t<>&\"'"))


@given(xml_text)
def test_message_round_trips_through_xml(text: str) -> None:
    response = twiml.message(text)
    assert response.media_type == "application/xml"
    root = ET.fromstring(response.body)
    assert root.tag == "Response"
    [message] = list(root)
    assert message.tag == "Message"
    assert (message.text or "") == text


def test_markup_in_text_stays_text() -> None:
    root = ET.fromstring(twiml.message('</Message><Redirect>http://evil</Redirect> & "x"').body)
    assert [child.tag for child in root] == ["Message"]
    assert root[0].text == '</Message><Redirect>http://evil</Redirect> & "x"'


def test_empty_response() -> None:
    assert ET.fromstring(twiml.empty().body).tag == "Response"
