"""The spamd answer to a scored (or skipped) message: CHECK, SYMBOLS, REPORT(_IFSPAM), PROCESS, HEADERS."""

from __future__ import annotations

from spamtl.mail.headers import add_headers
from spamtl.serve import protocol as proto
from spamtl.services.classify import Prepared, Skipped, UserModel, Verdict, verdict_headers
from spamtl.services.explain import Explanation, explain, symbol_names


def scored_answer(command: str, body: bytes, model: UserModel, message: Prepared, verdict: Verdict) -> bytes:
    """The answer for ``verdict``; symbols and report come from the pass that scored it (``verdict.scored``)."""
    spam = proto.spam_header(verdict.probability, verdict.spam_cutoff, verdict.ham_cutoff, verdict.verdict)
    if command == "CHECK":
        return proto.response(proto.EX_OK, headers=[spam])
    if command == "SYMBOLS":  # the parts of the score, as SpamAssassin lists the rules that hit
        return proto.response(proto.EX_OK, headers=[spam], body=",".join(symbol_names(verdict)).encode())
    if command in ("REPORT", "REPORT_IFSPAM"):
        text = ""
        if command == "REPORT" or verdict.verdict == "spam":
            text = _report(verdict, spam[1]) + _breakdown(explain(model, message, scored=verdict.scored))
        return proto.response(proto.EX_OK, headers=[spam], body=text.encode())
    processed = add_headers(body, verdict_headers(verdict, tests=symbol_names(verdict)))
    if command == "HEADERS":
        processed = _header_block(processed)
    return proto.response(proto.EX_OK, headers=[spam], body=processed)


def skipped_answer(command: str, body: bytes, skipped: Skipped) -> bytes:
    """The answer for input that is not mail: not spam, 0 points, the message back marked ``skipped``."""
    spam = ("Spam", "False ; 0.0 / 5.0")
    if command in ("PROCESS", "HEADERS"):
        processed = add_headers(body, [("X-Spamtl-Status", skipped.header_value())])
        if command == "HEADERS":
            processed = _header_block(processed)
        return proto.response(proto.EX_OK, headers=[spam], body=processed)
    if command == "CHECK":
        return proto.response(proto.EX_OK, headers=[spam])
    text = f"not scanned: {skipped.reason}\n" if command == "REPORT" else ""
    return proto.response(proto.EX_OK, headers=[spam], body=text.encode())


def _report(verdict: Verdict, spam_value: str) -> str:
    decided = f"{verdict.user or 'the user'}'s own label" if verdict.reason == "label" else "the model"
    return (f"spamtl verdict for {verdict.user or '(shared model)'}: {verdict.verdict}\n"
            f"  spam probability {verdict.probability:.4f}, spam cutoff {verdict.spam_cutoff:.4f}, "
            f"ham cutoff {verdict.ham_cutoff:.4f}\n"
            f"  score / threshold (SpamAssassin points): {spam_value.split(';', 1)[1].strip()}\n"
            f"  model v{verdict.model_version}, decided by {decided}, id {verdict.short_id}\n")


def _breakdown(explanation: Explanation, per_part: int = 3) -> str:
    """The score by part (shared, group, personal) with each part's strongest evidence, as in `spamtl explain`."""
    lines = [" log-odds  part / evidence"]
    for part in explanation.parts:
        label = part.kind if not part.name else f"{part.kind} ({part.name})"
        lines.append(f"{part.total:+9.2f}  {label}, intercept {part.intercept:+.2f}")
        evidence = sorted(part.spam[:per_part] + part.ham[:per_part], key=lambda e: -abs(e.contribution))
        lines += [f"{e.contribution:+9.2f}    {e.name}" for e in evidence[:per_part]]
    return "\n".join(lines) + "\n"


def _header_block(message: bytes) -> bytes:
    """The header section of a message, up to and including the empty line (all of it if there is none)."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        pos = message.find(sep)
        if pos >= 0:
            return message[:pos + len(sep)]
    return message
