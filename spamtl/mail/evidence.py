"""What the receiving MTA already wrote: Authentication-Results (RFC 8601) it can be trusted for, and trace facts.

Pure functions over the decoded header fields of a :class:`~spamtl.mail.parse.ParsedMessage` (top field
first).  No network.  Work is bounded: header values are already cut to ``MAX_HEADER_CHARS``, and at most
``MAX_AUTH_FIELDS`` Authentication-Results fields and ``MAX_RESULTS`` results per field are read.

The trust rule
--------------
An ``Authentication-Results`` field counts only when both hold:

1. its authserv-id (the first item of the field, RFC 8601 section 2.2) is one the site configured; and
2. it lies *above* the topmost ``Received`` field whose ``by`` host is that authserv-id or a name under it.

Mail gains header fields at the top as it travels, so everything below the Received field the site's MTA
wrote on accepting the message was already there when it arrived from outside, and a sender can write any
Authentication-Results field there, with the site's authserv-id too (RFC 8601 section 7.2).  The topmost
Received field whose ``by`` is the site's cannot be a forgery, since all the sender wrote lies below it, and
one a sender forges lower down does not move it.  An MTA that writes its Authentication-Results above its
own Received field (such as one written on an MX in front of the host that delivers) is therefore believed;
one written just below it (milters behind Postfix: OpenDKIM, OpenDMARC) is not, because there nothing tells
it apart from a sender's field at the top of what they sent.  A field without an authserv-id, or whose MTA
wrote no Received field the rule can find, counts for nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "AUTH_METHODS",
    "MAX_AUTH_FIELDS",
    "MAX_RESULTS",
    "AuthResult",
    "parse_authentication_results",
    "trusted_results",
    "received_by",
    "is_under",
    "normalize_authserv_id",
]

AUTH_METHODS = frozenset({"spf", "dkim", "dmarc", "arc"})
"""Methods whose results become evidence; the others (iprev, auth, dkim-atps ...) are skipped."""
MAX_AUTH_FIELDS = 16
"""Authentication-Results fields read per message (an MTA writes one to four)."""
MAX_RESULTS = 32
"""Results read per field (one per method and signature)."""

# One lexical item of a structured value: a quoted string (closed or not), a parenthesis, a ';', or a run of
# anything else.  The branches start with different characters, so each character is read once.
_LEX_RE = re.compile(r'"(?:[^"\\]|\\.)*"?|[();]|[^"();]+', re.DOTALL)
_ID_RE = re.compile(r'[^\s=;"/]+')
_METHOD_RE = re.compile(r"([a-z0-9][a-z0-9_-]*)\s*(?:/\s*\d+\s*)?=\s*([a-z0-9_-]+)")
# A property starts only where a run of name characters starts (the lookbehind), and no part gives back what
# it took (possessive): a long run that is not a property is read once, not once per character.
_PROP_RE = re.compile(r'(?<![a-z0-9_.-])([a-z0-9_-]++)\s*+\.\s*+([a-z0-9_-]++)\s*+=\s*+("(?:[^"\\]|\\.)*+"|[^\s";]++)')
_BY_RE = re.compile(r"(?:^|\s)by\s+([A-Za-z0-9][A-Za-z0-9.-]*)", re.IGNORECASE)
_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,251}[a-z0-9])?")


@dataclass(frozen=True, slots=True)
class AuthResult:
    """One ``method=result`` of an Authentication-Results field and its properties.

    ``method`` and ``result`` are lower-case; ``properties`` maps ``ptype.property`` (``header.d``,
    ``smtp.mailfrom``, ``header.from``) to its value, lower-cased, quotes removed.
    """

    method: str
    result: str
    properties: tuple[tuple[str, str], ...] = ()

    def get(self, name: str) -> str:
        """The value of property ``name`` ('' if absent)."""
        for key, value in self.properties:
            if key == name:
                return value
        return ""


def normalize_authserv_id(value: str) -> str | None:
    """``value`` lower-cased if it is a usable authserv-id (a host or domain name), else None."""
    name = value.strip().lower().rstrip(".")
    return name if _NAME_RE.fullmatch(name) and ".." not in name else None


def _uncommented(value: str) -> list[str]:
    """The value's ';'-separated items with comments removed and quoted strings kept whole."""
    items: list[str] = []
    current: list[str] = []
    depth = 0
    for lexeme in _LEX_RE.findall(value):
        if lexeme == "(":
            depth += 1
        elif lexeme == ")":
            depth = max(depth - 1, 0)
        elif depth:
            continue
        elif lexeme == ";":
            items.append("".join(current))
            current = []
            if len(items) > MAX_RESULTS:
                return items
        else:
            current.append(lexeme if lexeme[0] != '"' else " " + lexeme + " ")
    items.append("".join(current))
    return items


def parse_authentication_results(value: str, authserv_ids: Iterable[str] | None = None,
                                 ) -> tuple[str, list[AuthResult]] | None:
    """The authserv-id and the results of one Authentication-Results field value, or None if it has no id.

    With ``authserv_ids``, a field of another id is None too, and its results are not read.

    Lenient where mailers are (comments anywhere, a missing or present version, unknown methods and
    properties, quoted values, garbage between results), and strict on the one thing trust rests on: the
    value must start with an authserv-id, not with a result (``spf=pass ...`` has none).

    Examples
    --------
    >>> sid, results = parse_authentication_results(
    ...     'mx.example.org 1; (checked) dkim=pass (good) header.d=Shop.example header.s="s1"; spf=fail')
    >>> sid, [(r.method, r.result, r.get("header.d")) for r in results]
    ('mx.example.org', [('dkim', 'pass', 'shop.example'), ('spf', 'fail', '')])
    """
    items = _uncommented(value)
    head = items[0].strip()
    if head.startswith('"'):  # a quoted authserv-id, closed or garbage
        if len(head) < 2 or not head.endswith('"'):
            return None
        head = head[1:-1].strip()
    found = _ID_RE.match(head)
    if found is None or head[found.end():].lstrip().startswith("="):
        return None  # a result where the id should be ("spf=pass ..."): no authserv-id
    authserv_id = normalize_authserv_id(found.group(0))
    if authserv_id is None or (authserv_ids is not None and authserv_id not in authserv_ids):
        return None
    results: list[AuthResult] = []
    for item in items[1:MAX_RESULTS + 1]:
        text = item.strip().lower()
        method = _METHOD_RE.match(text)
        if method is None:
            continue  # "none", a stray authserv-id, garbage
        props = tuple((f"{ptype}.{prop}", pvalue.strip('"').strip())
                      for ptype, prop, pvalue in _PROP_RE.findall(text, method.end()))
        results.append(AuthResult(method.group(1), method.group(2), props))
    return authserv_id, results


def received_by(value: str) -> str:
    """The ``by`` host of a Received field value, lower-cased ('' if it names none)."""
    found = _BY_RE.search(value.split(";", 1)[0])
    return found.group(1).lower().rstrip(".") if found else ""


def is_under(name: str, domain: str) -> bool:
    """``name`` is ``domain`` or a name below it (``mx.example.org`` is under ``example.org``)."""
    return bool(name) and bool(domain) and (name == domain or name.endswith("." + domain))


def trusted_results(headers: Sequence[tuple[str, str]], authserv_ids: Iterable[str]) -> list[AuthResult]:
    """The results of the Authentication-Results fields the trust rule (module docstring) accepts.

    Parameters
    ----------
    headers : sequence of (name, value)
        Header fields top first, names lower-cased (``ParsedMessage.headers``).
    authserv_ids : iterable of str
        The site's authserv-ids, lower-case.  Empty: nothing is trusted.

    Returns
    -------
    list of AuthResult
        In header order; empty when no field counts.
    """
    ids = frozenset(authserv_ids)
    if not ids:
        return []
    waiting: list[tuple[str, list[AuthResult]]] = []  # fields seen above every Received of their id so far
    accepted: list[AuthResult] = []
    closed: set[str] = set()  # ids whose topmost Received has been passed: their lower fields are untrusted
    n_fields = 0
    for name, value in headers:
        if name == "received":
            host = received_by(value)
            for sid in ids - closed:
                if is_under(host, sid):
                    closed.add(sid)
                    accepted += [r for field_id, rs in waiting if field_id == sid for r in rs]
            if closed == ids:
                break
        elif name == "authentication-results" and n_fields < MAX_AUTH_FIELDS:
            n_fields += 1
            parsed = parse_authentication_results(value, ids)
            if parsed is not None and parsed[0] in ids and parsed[0] not in closed:
                waiting.append(parsed)
    return accepted
