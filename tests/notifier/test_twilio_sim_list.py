"""The simulator's Messages list speaks Twilio's wire format (the notifier's reconciliation
reads it through the official client): newest first, paged with next_page_uri, filtered by
To, From and DateSent on whole dates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx

from tests.harness import ACCOUNT_SID, AUTH_TOKEN, BOT_NUMBER, TwilioSim
from tests.notifier.conftest import new_phone

MESSAGES = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"


def test_list_is_paged_filtered_and_shaped_like_twilio(sim: TwilioSim) -> None:
    auth = (ACCOUNT_SID, AUTH_TOKEN)
    to, other = new_phone(), new_phone()
    with httpx.Client(base_url=sim.url, auth=auth) as client:
        for i in range(3):
            created = client.post(MESSAGES, data={"To": to, "From": BOT_NUMBER, "Body": f"m{i}"})
            assert created.status_code == 201
        client.post(MESSAGES, data={"To": other, "From": BOT_NUMBER, "Body": "not yours"})

        today = datetime.now(UTC).date()
        page = client.get(MESSAGES, params={"To": to, "DateSent>": f"{today}T23:59:59Z", "PageSize": 2})
        assert page.status_code == 200
        body = page.json()
        assert {
            "messages",
            "page",
            "page_size",
            "uri",
            "next_page_uri",
            "first_page_uri",
            "start",
            "end",
        } <= set(body)
        assert [m["body"] for m in body["messages"]] == ["m2", "m1"], "newest first; the time is ignored"
        assert body["page"] == 0 and body["page_size"] == 2 and body["next_page_uri"]
        assert all(m["to"] == to and m["from"] == BOT_NUMBER and m["date_sent"] for m in body["messages"])
        assert "received_at" not in body["messages"][0]

        rest = client.get(body["next_page_uri"]).json()
        assert [m["body"] for m in rest["messages"]] == ["m0"] and rest["next_page_uri"] is None

        tomorrow = today + timedelta(days=1)
        assert client.get(MESSAGES, params={"To": to, "DateSent>": str(tomorrow)}).json()["messages"] == []
        assert len(client.get(MESSAGES, params={"To": to, "DateSent<": str(today)}).json()["messages"]) == 3
        assert len(client.get(MESSAGES, params={"To": to, "DateSent": str(today)}).json()["messages"]) == 3
        assert client.get(MESSAGES, params={"From": "whatsapp:+10000000000"}).json()["messages"] == []

        assert httpx.get(f"{sim.url}{MESSAGES}").status_code == 401
