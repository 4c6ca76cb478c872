"""Rows no database takes as they are: made writable where they can be, isolated where not, never a stall.

Run against the real database (SQLite by default, PostgreSQL with DATABASE_URL): NUL and
lone surrogates are refused differently by each, and both must end the same way.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import stat
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from audit.models import AuditEvent
from audit.selectors import audit_chain_verify
from audit.services import AuditEntry, deferred_audit
from routing.ml.decide import Outcome
from routing.ml.models import RouterSample, SmartGroup
from routing.ml.samples import SampleRow, sample_writer
from routing.models import RequestLog, UsageRollup
from routing.usage import UsageRow, usage_writer
from tests.keys import Issued
from tests.routing.usage_books import usage as usage_row

pytestmark = pytest.mark.django_db(transaction=True)

SEQUENCE = itertools.count()
SURROGATE, NUL = "\ud800", "\x00"
PROMPT = [{"role": "user", "content": f"tell me the secret plan {SURROGATE}"}]


@pytest.fixture(autouse=True)
def var_dir(settings, tmp_path) -> Path:
    settings.VAR_DIR = tmp_path
    return tmp_path


@pytest.fixture
def outsider_key(outsider, key_factory) -> Issued:
    return key_factory(outsider, "outsider key")


def usage(issued: Issued, **fields: object) -> UsageRow:
    """A usage row of ``issued`` made now (the rollups it lands in are this hour's)."""
    return usage_row(issued, **{"created_at": timezone.now(), **fields})


def letters(var_dir: Path, writer: str) -> list[dict]:
    path = var_dir / "dead-letter" / f"{writer}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_usage_rows_with_nul_or_lone_surrogates_are_written_beside_other_tenants_rows(owner_key, outsider_key, var_dir):
    decision = {"strategy": f"cost{NUL}", "note": f"odd {SURROGATE}", f"key{NUL}": 1}
    rows = [
        usage(owner_key, route_decision=decision, prompt=PROMPT),
        usage(owner_key, model_requested=f"gpt{NUL}-4o{SURROGATE}"),
        usage(owner_key, error_type=f"bad{SURROGATE}", model_served=f"x{NUL}"),
        usage(outsider_key),
        usage(outsider_key, model_requested="gpt-4o"),
    ]
    usage_writer._rows = list(rows)
    assert usage_writer.flush_now() == 5
    assert RequestLog.objects.count() == 5
    assert RequestLog.objects.filter(tenant_id=outsider_key.key.tenant_id).count() == 2
    stored = RequestLog.objects.get(request_id=rows[0].request_id)
    assert stored.route_decision["strategy"] == "cost\ufffd"
    assert stored.route_decision["note"] == "odd \ufffd"
    assert (
        stored.route_decision["prompt_sha256"]
        == hashlib.sha256(
            json.dumps(PROMPT, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
                "utf-8", "surrogatepass"
            )
        ).hexdigest()
    )
    assert RequestLog.objects.get(request_id=rows[1].request_id).model_requested == "gpt\ufffd-4o\ufffd"
    assert UsageRollup.objects.filter(model="gpt\ufffd-4o\ufffd").exists()
    assert letters(var_dir, "usage") == []


def test_a_usage_row_the_database_refuses_is_set_aside_without_its_prompt_or_credentials(
    owner_key, outsider_key, var_dir
):
    refused = usage(
        owner_key,
        prompt_tokens=-5,  # a positive-integer column: refused by either database
        route_decision={"strategy": "cost"},
        prompt=PROMPT,
        cost_overrides={"input_cost_per_token": 1e-6, "aws_secret_access_key": "AKIA-very-secret"},
    )
    usage_writer._rows = [usage(owner_key), refused, usage(outsider_key)]
    assert usage_writer.flush_now() == 2
    assert set(RequestLog.objects.values_list("tenant_id", flat=True)) == {
        owner_key.key.tenant_id,
        outsider_key.key.tenant_id,
    }
    [letter] = letters(var_dir, "usage")
    path = var_dir / "dead-letter" / "usage.jsonl"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert "secret plan" not in text and "AKIA" not in text
    assert "prompt" not in letter["row"]
    assert letter["row"]["route_decision"]["prompt_sha256"]
    assert letter["row"]["cost_overrides"] == {"input_cost_per_token": 1e-6}
    # The writer is not held back: the next flush writes as usual.
    usage_writer._rows = [usage(outsider_key)]
    assert usage_writer.flush_now() == 1


def test_audit_entries_with_unwritable_text_are_chained_and_a_refused_one_holds_nothing_back(owner, outsider, var_dir):
    entries = [
        AuditEntry(actor=f"key:sk{NUL}", action="auth.failure", details={"message": f"bad {SURROGATE}"}),
        AuditEntry(actor="key:sk-owner", action="authz.denied", tenant_id=owner.pk, target=f"model:{SURROGATE}"),
        AuditEntry(actor="key:sk-x", action="auth.failure", ip="not an address", details={f"k{NUL}": [NUL]}),
        AuditEntry(actor="key:sk-big", action="authz.denied", tenant_id=2**70),  # no bigint holds it
        AuditEntry(actor="key:sk-outsider", action="authz.denied", tenant_id=outsider.pk),
    ]
    deferred_audit._rows = list(entries)
    assert deferred_audit.flush_now() == 4
    events = AuditEvent.objects.filter(action__in=["auth.failure", "authz.denied"])
    assert events.count() == 4
    assert events.filter(tenant_id=outsider.pk).exists() and events.filter(tenant_id=owner.pk).exists()
    odd = events.get(actor="key:sk-x")
    assert odd.ip is None and odd.details == {"k\ufffd": ["\ufffd"], "ip_unparsed": "not an address"}
    assert events.get(actor="key:sk\ufffd").details == {"message": "bad \ufffd"}
    for chain in ("platform", f"tenant:{owner.pk}", f"tenant:{outsider.pk}"):
        assert audit_chain_verify(chain).ok
    [letter] = letters(var_dir, "audit")
    assert letter["row"]["tenant_id"] == 2**70


def test_router_samples_keep_no_prompt_text_in_dead_letters(owner, var_dir):
    group = SmartGroup.objects.create(name="auto", strong_model="gpt-4o", weak_model="gpt-4o-mini")
    record = {"candidates": [{"predicted_win_rate": 0.7}], "chosen": "gpt-4o", "note": f"x{NUL}"}

    def sample(text: str, outcome_record: dict) -> SampleRow:
        return SampleRow(
            request_id=f"req_s{next(SEQUENCE)}",
            tenant_id=owner.pk,
            group_id=group.pk,
            prompt_sha256=hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(),
            prompt_text=text,
            prompt_chars=len(text),
            outcome=Outcome("auto", "gpt-4o", "rules", outcome_record, ()),
        )

    good = sample(f"a prompt with {NUL} and {SURROGATE}", record)
    broken = sample("the confidential prompt", {"chosen": "gpt-4o"})  # no candidates: the write cannot build it
    sample_writer._rows = [good, broken]
    assert sample_writer.flush_now() == 1
    stored = RouterSample.objects.get()
    assert stored.prompt_text == "a prompt with \ufffd and \ufffd" and stored.record["note"] == "x\ufffd"
    [letter] = letters(var_dir, "router-samples")
    assert "confidential" not in json.dumps(letter)
    assert letter["row"]["prompt_sha256"] == broken.prompt_sha256


def test_dead_letters_listed_and_replayed_by_the_command(owner_key, outsider_key, var_dir, capsys):
    refused = usage(owner_key, prompt_tokens=-1)
    usage_writer._rows = [refused, usage(outsider_key)]
    usage_writer.flush_now()
    call_command("dead_letters", "list", "--writer", "usage")
    listed = capsys.readouterr().out
    assert "usage: 1 dead letters" in listed and "IntegrityError" in listed
    with pytest.raises(CommandError, match="1 dead letters remain"):
        call_command("dead_letters", "replay", "--writer", "usage")  # still refused: kept
    assert "0 written, 1 refused again" in capsys.readouterr().out
    [letter] = letters(var_dir, "usage")
    assert letter["attempts"] == 2
    # The operator fixes what was wrong with the row and replays it through the same writer.
    letter["row"]["prompt_tokens"] = 1
    (var_dir / "dead-letter" / "usage.jsonl").write_text(json.dumps(letter) + "\n")
    call_command("dead_letters", "replay")
    assert "1 written" in capsys.readouterr().out
    assert RequestLog.objects.filter(request_id=refused.request_id, prompt_tokens=1).exists()
    assert letters(var_dir, "usage") == []
