"""ParsedMessage -> prefixed tokens -> one sparse row in a fixed hashed space.

Tokens say where they came from (``subj:``, ``body:``, ``hdr:x-mailer:`` ...) and are hashed with CRC-32,
stable across processes and Python versions.  Rows are binary or ``1 + log(count)``, at unit L2 norm;
:class:`IdfWeights` is the one fitted piece.  numpy only (scipy where a CSR matrix is built).
"""

from __future__ import annotations

import io
import os
import re
import threading
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from spamtl.mail.evidence import AUTH_METHODS, AuthResult, is_under, normalize_authserv_id, trusted_results
from spamtl.mail.parse import ParsedMessage, parse_address

__all__ = [
    "DEFAULT_N_FEATURES",
    "FEATURE_VERSION",
    "FeatureRow",
    "FeatureConfig",
    "IdfWeights",
    "MessageTokens",
    "load_npz",
    "TF_MODES",
    "CHARGRAM_SIZES",
    "authserv_ids",
    "tokenize",
    "hash_tokens",
    "featurize",
    "featurize_with_tokens",
    "column_tokens",
    "rows_to_csr",
]

DEFAULT_N_FEATURES = 2**18
FEATURE_VERSION = 1
"""Bump when tokens or weighting change: cached rows of another version are recomputed."""

TF_MODES = ("binary", "log")

MAX_BODY_WORDS = 3_000
"""Body words tokenised; they are read from a prefix of ``16 * MAX_BODY_WORDS`` characters only."""
MAX_SUBJECT_WORDS = 50
MAX_HEADER_TOKENS = 40
"""Tokens of one header value (values are already cut to ``mail.MAX_HEADER_CHARS``)."""
MAX_DOMAIN_CHARS = 253
"""Characters of a domain looked at (the longest DNS name); only its last labels make tokens."""
MAX_TOKENS = 20_000
"""Tokens per message, whatever the message: a backstop, the caps above add up to about 9,000 (12,000 with bigrams,
3,000 more with character n-grams)."""
CHARGRAM_SIZES = (0, 3, 4, 5)
"""Character n-gram lengths :class:`FeatureConfig` accepts (0: none)."""
CHARGRAM_CHARS = 3_000
"""Characters of subject and body text whose n-grams are taken."""
MAX_AUTHSERV_IDS = 32
"""Trusted authserv-ids a site may configure."""
MAX_HOPS = 8
"""Received fields counted one by one; more are the one bucket ``hops:8+``."""

# A word: from a letter or digit to the last letter or digit of a run of word characters, apostrophes,
# dots and hyphens.  Spelt as blocks of letters/digits joined by separators: the same matches as
# r"[^\W_](?:[\w'’.-]*[^\W_])?" without its backtracking from the run's end.
_WORD_RE = re.compile(r"[^\W_]+(?:[_'’.-]+[^\W_]+)*")
# On ASCII text \w is [a-zA-Z0-9_] and ’ cannot occur: the same matches with plain (faster) classes.
_ASCII_WORD_RE = re.compile(r"[a-zA-Z0-9]+(?:[_'.-]+[a-zA-Z0-9]+)*")
_HDR_TOKEN_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
_IDISH_RE = re.compile(r"(?=.*\d)[a-z0-9._-]{13,}|\d{5,}")


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    """How messages become vectors.

    Parameters
    ----------
    n_features : int
        Size of the hashed space, a power of two between 2**10 and 2**24.
    bigrams : bool
        Add word bigrams of subject and body.  Off by default: they make the
        model larger and slower and no better (docs/model.md).
    headers : bool
        Tokenise header names and values (``hdr:NAME:TOKEN``).
    tf : {'binary', 'log'}
        Value of a token present ``count`` times, before L2 normalisation:
        1, or ``1 + log(count)``.  ``'binary'`` (default, with the idf weights)
        ranks better; ``'log'`` stays readable so that models trained with it
        keep working.
    auth : bool
        The ``auth:`` family: SPF, DKIM, DMARC and ARC results of the
        Authentication-Results fields written by one of ``authserv_ids``
        (:func:`spamtl.mail.evidence.trusted_results`) and the alignment of
        the From domain with the authenticated domains.  It also drops every
        authentication header (Authentication-Results, Received-SPF, ARC-*)
        from the ``hdr:`` family, so a sender's forged results never become
        tokens.  On by default: with no ``authserv_ids`` it adds no token.
    authserv_ids : tuple of str
        The site's trusted authserv-ids (site configuration, the
        ``trusted_authserv_ids`` setting), stored lower-case and sorted.  The
        :attr:`key` holds their CRC-32 only (the key is short): see
        :meth:`from_key`.
    bulk : bool
        The ``bulk:`` family: List-Id, List-Unsubscribe (and one-click
        List-Unsubscribe-Post), Precedence.  Off by default: no better.
    sender : bool
        The ``sender:`` family: Return-Path and Sender domains and whether
        they align with the From domain.  Off by default: no better.
    hops : bool
        The ``hops:`` family: how many Received fields (0 to 7, then 8+).
        On by default (docs/model.md has the ablation).
    chargrams : int
        0 (off) or n in 3..5: binary character n-grams (``cN:``) of the first
        ``CHARGRAM_CHARS`` characters of subject and body text.  Off by
        default: worse, and three times the featurising CPU.

    Notes
    -----
    Each family added after the first release is off when its field is
    absent from a key, so a model trained before it existed keeps the
    tokens, rows and scores it was trained with.
    """

    n_features: int = DEFAULT_N_FEATURES
    bigrams: bool = False
    headers: bool = True
    tf: str = "binary"
    auth: bool = True
    authserv_ids: tuple[str, ...] = ()
    bulk: bool = False
    sender: bool = False
    hops: bool = True
    chargrams: int = 0

    def __post_init__(self) -> None:
        n = self.n_features
        if not isinstance(n, int) or n < 2**10 or n > 2**24 or n & (n - 1):
            raise ValueError(f"n_features must be a power of two in [2**10, 2**24], got {n!r}")
        if self.tf not in TF_MODES:
            raise ValueError(f"tf must be one of {TF_MODES}, got {self.tf!r}")
        if self.chargrams not in CHARGRAM_SIZES:
            raise ValueError(f"chargrams must be one of {CHARGRAM_SIZES} (0: off), got {self.chargrams!r}")
        object.__setattr__(self, "authserv_ids", authserv_ids(self.authserv_ids))

    @property
    def key(self) -> str:
        """A short string that identifies this configuration for caches.

        >>> FeatureConfig().key
        'v1:n262144:b0:h1:tbinary:a1:r1'
        >>> FeatureConfig.from_key('v1:n262144:b0:h1').tf  # written before tf existed
        'log'
        >>> FeatureConfig.from_key('v1:n262144:b0:h1:tbinary').hops  # written before hops existed
        False
        >>> FeatureConfig(authserv_ids=('mx.example.org',), bulk=True).key
        'v1:n262144:b0:h1:tbinary:a1:i30b5a289:l1:r1'
        """
        key = f"v{FEATURE_VERSION}:n{self.n_features}:b{int(self.bigrams)}:h{int(self.headers)}"
        # Keys written before ``tf`` existed have no t-part and mean 'log'; before the families that follow
        # existed, none of their parts, and each absent part means "off".
        key = key if self.tf == "log" else f"{key}:t{self.tf}"
        if self.auth:
            key += ":a1"
            if self.authserv_ids:
                key += f":i{zlib.crc32(','.join(self.authserv_ids).encode()):08x}"
        for letter, is_on in (("l", self.bulk), ("s", self.sender), ("r", self.hops)):
            if is_on:
                key += f":{letter}1"
        return key + (f":c{self.chargrams}" if self.chargrams else "")

    @classmethod
    def from_key(cls, key: str, authserv_ids: Sequence[str] = ()) -> FeatureConfig:
        """The configuration a :attr:`key` was made from (raises ValueError for other versions).

        The key holds only a checksum of the trusted authserv-ids: they are the site's to say, at scoring
        time too (an id the site stops trusting must stop counting at once, not after the next training).
        ``authserv_ids`` are the site's current ones; they are used when the key's ``auth`` family is on,
        and then the result's key differs from ``key`` when they are not the ids the key was made with.
        """
        parts = dict((p[0], p[1:]) for p in key.split(":") if p)
        if parts.get("v") != str(FEATURE_VERSION) or not set(parts) <= set("vnbhtailsrc"):
            raise ValueError(f"features {key!r} were made by another version of spamtl")
        try:
            flags = {name: parts.pop(letter, "0") == "1"
                     for letter, name in (("a", "auth"), ("l", "bulk"), ("s", "sender"), ("r", "hops"))}
            return cls(n_features=int(parts["n"]), bigrams=parts["b"] == "1", headers=parts["h"] == "1",
                       tf=parts.get("t", "log"), chargrams=int(parts.get("c", "0")),
                       authserv_ids=tuple(authserv_ids) if flags["auth"] else (), **flags)
        except (KeyError, ValueError):
            raise ValueError(f"features {key!r} were made by another version of spamtl") from None


def authserv_ids(values: Iterable[str]) -> tuple[str, ...]:
    """Trusted authserv-ids as :class:`FeatureConfig` keeps them: lower-case, sorted, each once.

    Raises
    ------
    ValueError
        A value that is not a host or domain name such as ``mx.example.org``, or more than
        ``MAX_AUTHSERV_IDS`` of them.
    """
    if isinstance(values, str):
        raise ValueError(f"authserv_ids must be a list of names, got the string {values!r}")
    out = set()
    for value in values:
        name = normalize_authserv_id(value) if isinstance(value, str) else None
        if name is None:
            raise ValueError(f"authserv-id {value!r} is not a host or domain name such as mx.example.org")
        out.add(name)
    if len(out) > MAX_AUTHSERV_IDS:
        raise ValueError(f"at most {MAX_AUTHSERV_IDS} trusted authserv-ids, got {len(out)}")
    return tuple(sorted(out))


@dataclass(frozen=True, slots=True)
class FeatureRow:
    """One message's sparse vector: sorted unique column indices and their values."""

    indices: np.ndarray  # int32, shape (nnz,)
    values: np.ndarray  # float32, shape (nnz,)

    def to_bytes(self) -> bytes:
        """Compact binary form (little-endian int32 indices then float32 values)."""
        return self.indices.astype("<i4").tobytes() + self.values.astype("<f4").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> FeatureRow:
        n = len(data) // 8
        if len(data) != 8 * n:
            raise ValueError("corrupt feature row: length is not a multiple of 8")
        indices = np.frombuffer(data, dtype="<i4", count=n)
        values = np.frombuffer(data, dtype="<f4", count=n, offset=4 * n)
        return cls(indices.astype(np.int32), values.astype(np.float32))


def _words(text: str, limit: int) -> list[str]:
    # Words average well under 12 characters; scanning a bounded prefix keeps
    # the work per message bounded without cutting any realistic word list.
    text = text[: limit * 16].lower()
    words = (_ASCII_WORD_RE if text.isascii() else _WORD_RE).findall(text)
    if words and max(map(len, words)) > 40:
        words = [w for w in words if len(w) <= 40]
    return words[:limit]


def _domain_tokens(prefix: str, domain: str) -> list[str]:
    """The domain and each parent with at least two labels: a.b.example.org -> ...example.org."""
    if not domain:
        return []
    # Only the last labels are split off: a "domain" of 50,000 labels must not give 50,000 suffixes.
    labels = domain[-MAX_DOMAIN_CHARS:].split(".") if len(domain) > MAX_DOMAIN_CHARS else domain.split(".")
    return [prefix + ".".join(labels[i:]) for i in range(min(6, max(1, len(labels) - 1)))]


def _header_tokens(name: str, value: str) -> list[str]:
    if name == "received":
        # The part after ';' is a timestamp: as telling as Date, and as useless.
        value = value.rsplit(";", 1)[0]
    out = [f"hdr:{name}"]
    for token in _HDR_TOKEN_RE.findall(value.lower())[:MAX_HEADER_TOKENS]:
        if len(token) < 2 or _IDISH_RE.fullmatch(token):
            continue  # queue ids, serial numbers: unique per message, pure noise
        out.append(f"hdr:{name}:{token}")
    return out


def tokenize(msg: ParsedMessage, config: FeatureConfig = FeatureConfig()) -> list[str]:
    """List the prefixed tokens of a message (with repetitions).

    Parameters
    ----------
    msg : ParsedMessage
        A parsed message.
    config : FeatureConfig, optional
        Which token families to produce.

    Returns
    -------
    list of str
        Tokens such as ``'subj:free'``, ``'body:viagra'``, ``'from:example.org'``.
        Never derived from the Date header.

    Examples
    --------
    >>> from spamtl.mail.parse import parse_message
    >>> msg = parse_message(b"From: a@mail.example.org\\nSubject: Cheap pills\\n\\nbuy now")
    >>> [t for t in tokenize(msg) if not t.startswith("hdr:")]
    ['subj:cheap', 'subj:pills', 'body:buy', 'body:now', 'from:mail.example.org', 'from:example.org', 'fromaddr:a@mail.example.org', 'ct:text/plain', 'bodylen:2', 'hops:0']
    """
    return MessageTokens(*_token_parts(msg, config)).as_list()


_BODY = "body:"


@dataclass(frozen=True, slots=True)
class MessageTokens:
    """A message's tokens as :func:`featurize_with_tokens` counted them, in three parts.

    ``head`` are the tokens before the body words, ``body`` the body words
    without their ``body:`` prefix, ``tail`` the tokens after them (before the
    ``MAX_TOKENS`` cut).  Kept with a score so that an explanation can name
    the row's columns without tokenising the message again.
    """

    head: list[str]
    body: list[str]
    tail: list[str]

    def as_list(self) -> list[str]:
        """The prefixed tokens, with repetitions, cut to ``MAX_TOKENS``: what :func:`tokenize` returns."""
        return (self.head + list(map(_BODY.__add__, self.body)) + self.tail)[:MAX_TOKENS]


def _token_parts(msg: ParsedMessage, config: FeatureConfig) -> tuple[list[str], list[str], list[str]]:
    """:func:`tokenize`'s tokens in three parts: those before the body words, the body words
    (without their ``body:`` prefix), and those after (before the MAX_TOKENS cut)."""
    tokens: list[str] = []
    subj = _words(msg.subject, MAX_SUBJECT_WORDS)
    tokens += ["subj:" + w for w in subj]
    if config.bigrams:
        tokens += [f"subj2:{a} {b}" for a, b in zip(subj, subj[1:])]
    if not subj:
        tokens.append("subj:<empty>")
    head, tokens = tokens, []
    body = _words(msg.text, MAX_BODY_WORDS)
    if config.bigrams:
        tokens += [f"body2:{a} {b}" for a, b in zip(body, body[1:])]
    tokens += _domain_tokens("from:", msg.from_domain)
    if msg.from_address:
        tokens.append("fromaddr:" + msg.from_address)
    tokens += _domain_tokens("replyto:", msg.reply_to_domain)
    if msg.reply_to_domain and msg.reply_to_domain != msg.from_domain:
        tokens.append("replyto:<differs>")
    for host in msg.url_hosts:
        tokens += _domain_tokens("url:", host)
    for att in msg.attachments:
        tokens.append("att:type:" + att.content_type)
        if "." in att.filename:
            tokens.append("att:ext:" + att.filename.rsplit(".", 1)[1].lower()[:10])
    tokens += ["ct:" + ct for ct in msg.content_types]
    tokens += ["charset:" + cs.lower() for cs in msg.charsets]
    if msg.is_html_only:
        tokens.append("meta:html-only")
    if msg.defects:
        tokens.append("meta:defective")
    # Coarse body length (log2 of word count) says "one-line spam" vs "long letter".
    tokens.append(f"bodylen:{len(body).bit_length()}")
    if config.headers:
        for name, value in msg.headers:
            if not (config.auth and _is_auth_header(name)):
                tokens += _header_tokens(name, value)
    if config.auth or config.bulk or config.sender or config.hops or config.chargrams:
        tokens += _evidence_tokens(msg, config)
    return head, body, tokens


def _is_auth_header(name: str) -> bool:
    """Fields holding authentication results or signatures anyone can write (Authentication-Results and its
    copies, Received-SPF, ARC-*): only the trusted ``auth:`` family speaks for them."""
    return "authentication-results" in name or "received-spf" in name or name.startswith("arc-")


def _evidence_tokens(msg: ParsedMessage, config: FeatureConfig) -> list[str]:
    """The tokens of the families added after the first release, in a fixed order, each only when on."""
    tokens: list[str] = []
    if config.auth:
        tokens += _auth_tokens(trusted_results(msg.headers, config.authserv_ids), msg.from_domain)
    if config.bulk:
        tokens += _bulk_tokens(msg.headers)
    if config.sender:
        tokens += _sender_tokens(msg.headers, msg.from_domain)
    if config.hops:
        hops = sum(1 for name, _ in msg.headers if name == "received")
        tokens.append(f"hops:{hops}" if hops < MAX_HOPS else f"hops:{MAX_HOPS}+")
    if config.chargrams:
        n = config.chargrams
        text = (msg.subject + "\n" + msg.text)[:CHARGRAM_CHARS]
        tokens += [f"c{n}:{gram}" for gram in dict.fromkeys(text[i:i + n] for i in range(len(text) - n + 1))]
    return tokens


def _is_aligned(domain: str, from_domain: str) -> bool:
    """Relaxed alignment, approximated without a public-suffix list: one domain is the other or under it."""
    return "." in domain and (is_under(domain, from_domain) or is_under(from_domain, domain))


def _auth_tokens(results: list[AuthResult], from_domain: str) -> list[str]:
    """``auth:METHOD=RESULT`` per trusted result, the domains that passed, and their alignment with From."""
    tokens: list[str] = []
    for r in results:
        if r.method not in AUTH_METHODS:
            continue
        tokens.append(f"auth:{r.method}={r.result}")
        if r.result != "pass":
            continue
        if r.method in ("dkim", "spf"):
            # The domain that passed: DKIM's signing domain (d=, else i='s), SPF's envelope sender domain.
            prop = r.get("header.d") or r.get("header.i") if r.method == "dkim" else r.get("smtp.mailfrom")
            domain = prop.rpartition("@")[2].strip(".")[:MAX_DOMAIN_CHARS]
            if domain:
                tokens += _domain_tokens(f"auth:{r.method}:d:", domain)
                aligned = _is_aligned(domain, from_domain)
                tokens.append(f"auth:{r.method}:{'aligned' if aligned else 'unaligned'}")
        elif r.method == "dmarc" and _is_aligned(r.get("header.from"), from_domain):
            tokens.append("auth:dmarc:aligned")
    if "auth:dkim:aligned" in tokens:  # one aligned signature is what counts, whoever else signed
        tokens = [t for t in tokens if t != "auth:dkim:unaligned"]
    return tokens


def _bulk_tokens(headers: Sequence[tuple[str, str]]) -> list[str]:
    """The marks of list and bulk mail: List-Id (and its domain), List-Unsubscribe kinds, Precedence."""
    tokens: list[str] = []
    for name, value in headers:
        lowered = value.lower()
        if name == "list-id":
            list_id = lowered.rpartition("<")[2].partition(">")[0].strip() or lowered.strip()
            tokens += ["bulk:list-id", *_domain_tokens("bulk:list-id:", list_id[:MAX_DOMAIN_CHARS])]
        elif name == "list-unsubscribe":
            tokens.append("bulk:list-unsubscribe")
            if "mailto:" in lowered:
                tokens.append("bulk:unsub:mailto")
            if "http:" in lowered or "https:" in lowered:
                tokens.append("bulk:unsub:http")
        elif name == "list-unsubscribe-post" and "list-unsubscribe=one-click" in lowered.replace(" ", ""):
            tokens.append("bulk:unsub:one-click")
        elif name == "precedence":
            word = lowered.strip().split(" ", 1)[0]
            tokens.append(f"bulk:precedence={word if word in ('bulk', 'list', 'junk') else 'other'}")
    return tokens


def _sender_tokens(headers: Sequence[tuple[str, str]], from_domain: str) -> list[str]:
    """The envelope sender (the topmost Return-Path, written at delivery) and Sender domains against From."""
    tokens: list[str] = []
    for field in ("return-path", "sender"):
        value = next((v for name, v in headers if name == field), None)
        short = "rp" if field == "return-path" else "sender"
        if value is None:
            if field == "return-path":  # (a Sender field is rare, its absence says nothing)
                tokens.append("sender:rp:absent")
            continue
        _, domain = parse_address(value)
        if not domain:
            tokens.append(f"sender:{short}:null")  # "<>": a bounce or an auto-reply
            continue
        tokens += _domain_tokens(f"sender:{short}:", domain)
        tokens.append(f"sender:{short}:aligned" if _is_aligned(domain, from_domain) else f"sender:{short}:other")
    return tokens


def hash_tokens(tokens: Iterable[str], n_features: int = DEFAULT_N_FEATURES, tf: str = "binary") -> FeatureRow:
    """Hash tokens into a unit-norm sparse row.

    Parameters
    ----------
    tokens : iterable of str
        Tokens, repetitions counted.
    n_features : int
        Size of the hashed space (a power of two).
    tf : {'binary', 'log'}
        Each distinct token counts 1, or ``1 + log(count)``.

    Returns
    -------
    FeatureRow
        ``indices`` sorted and unique (int32), ``values`` (float32): the
        token values summed per column and scaled to unit L2 norm.
        An empty token list gives an empty row.

    Notes
    -----
    column = crc32(token.encode('utf-8')) mod n_features.  Collisions add up.
    """
    counts = Counter(tokens)
    if not counts:
        return FeatureRow(np.zeros(0, np.int32), np.zeros(0, np.float32))
    _check_cache()
    cache = _CRC_CACHE
    hashes = [cache.get(t) or _crc(t) for t in counts]
    return _row(hashes, list(counts.values()), n_features, tf)


def _row(hashes: list[int], counts: list[int], n_features: int, tf: str) -> FeatureRow:
    """The unit-norm row of distinct tokens given by their CRCs and counts, in first-occurrence order."""
    cols = np.array(hashes, dtype=np.int64) & (n_features - 1)
    if tf == "binary":
        weights = np.ones(len(hashes))
    elif tf == "log":
        weights = 1.0 + np.log(np.array(counts, dtype=np.float64))
    else:
        raise ValueError(f"tf must be one of {TF_MODES}, got {tf!r}")
    uniq, inverse = np.unique(cols, return_inverse=True)
    values = np.bincount(inverse, weights=weights, minlength=len(uniq))
    values /= np.sqrt(values @ values)
    return FeatureRow(uniq.astype(np.int32), values.astype(np.float32))


_CRC_CACHE: dict[str, int] = {}
_BODY_CRC_CACHE: dict[str, int] = {}
"""Body word -> CRC of ``"body:" + word``: the body's tokens are hashed without building them."""
_CRC_CACHE_MAX = 2_000_000


def _check_cache() -> None:
    if len(_CRC_CACHE) + len(_BODY_CRC_CACHE) > _CRC_CACHE_MAX:
        _CRC_CACHE.clear()
        _BODY_CRC_CACHE.clear()


def _crc(token: str) -> int:
    """CRC-32 of the UTF-8 token, plus 2**32 so that a cached 0 is never mistaken for a miss."""
    value = zlib.crc32(token.encode("utf-8", "surrogatepass")) | (1 << 32)
    _CRC_CACHE[token] = value
    return value


def _body_crc(word: str) -> int:
    value = zlib.crc32((_BODY + word).encode("utf-8", "surrogatepass")) | (1 << 32)
    _BODY_CRC_CACHE[word] = value
    return value


def featurize(msg: ParsedMessage, config: FeatureConfig = FeatureConfig()) -> FeatureRow:
    """Tokenise and hash one message (see :func:`tokenize` and :func:`hash_tokens`).

    The same row as ``hash_tokens(tokenize(msg, config), ...)``, computed without
    building a ``body:`` string per body word: the three parts of the token list
    share no token (each family has its own prefix), so counting each part on its
    own and joining the counts in order gives the same tokens, counts and
    first-occurrence order as counting the whole list.
    """
    return featurize_with_tokens(msg, config)[0]


def featurize_with_tokens(msg: ParsedMessage,
                          config: FeatureConfig = FeatureConfig()) -> tuple[FeatureRow, MessageTokens]:
    """:func:`featurize`'s row and the tokens it was made from, in one pass (for scoring with an explanation)."""
    tokens = MessageTokens(*_token_parts(msg, config))
    return _featurize_tokens(tokens, config), tokens


def _featurize_tokens(tokens: MessageTokens, config: FeatureConfig) -> FeatureRow:
    head, body, tail = tokens.head, tokens.body, tokens.tail
    if len(head) + len(body) + len(tail) > MAX_TOKENS:  # the cut falls inside: count the list itself
        return hash_tokens((head + list(map(_BODY.__add__, body)) + tail)[:MAX_TOKENS], config.n_features,
                           config.tf)
    counted = (Counter(head), Counter(body), Counter(tail))
    if not any(counted):
        return FeatureRow(np.zeros(0, np.int32), np.zeros(0, np.float32))
    _check_cache()
    cache, body_cache = _CRC_CACHE, _BODY_CRC_CACHE
    hashes = [cache.get(t) or _crc(t) for t in counted[0]]
    hashes += [body_cache.get(w) or _body_crc(w) for w in counted[1]]
    hashes += [cache.get(t) or _crc(t) for t in counted[2]]
    counts = [*counted[0].values(), *counted[1].values(), *counted[2].values()]
    return _row(hashes, counts, config.n_features, config.tf)


def column_tokens(tokens: Iterable[str], n_features: int) -> dict[int, list[str]]:
    """Column -> the distinct tokens hashed to it, in first-seen order: what names a row's columns.

    The same hash as :func:`hash_tokens` (several tokens share a column when their CRCs collide).
    """
    _check_cache()
    cache = _CRC_CACHE
    names: dict[int, list[str]] = {}
    for token in dict.fromkeys(tokens):
        names.setdefault((cache.get(token) or _crc(token)) & (n_features - 1), []).append(token)
    return names


def rows_to_csr(rows: Sequence[FeatureRow], n_features: int = DEFAULT_N_FEATURES):  # type: ignore[no-untyped-def]
    """Stack rows into a ``scipy.sparse.csr_matrix`` of shape (len(rows), n_features), float64."""
    import scipy.sparse as sp

    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    if rows:
        indptr[1:] = np.cumsum([len(r.indices) for r in rows])
        indices = np.concatenate([r.indices for r in rows]).astype(np.int32)
        data = np.concatenate([r.values for r in rows]).astype(np.float64)
    else:
        indices = np.zeros(0, np.int32)
        data = np.zeros(0, np.float64)
    return sp.csr_matrix((data, indices, indptr), shape=(len(rows), n_features))


@dataclass(frozen=True)
class IdfWeights:
    """Inverse document frequencies fitted on training rows; reweights rows before scoring.

    ``idf(j) = ln((1 + n) / (1 + df(j))) + 1`` where n is the number of
    training rows and df(j) how many of them have column j: scikit-learn's
    ``TfidfTransformer(smooth_idf=True)``.  A column no training row has gets
    the largest value, ``ln(1 + n) + 1`` (:attr:`default`).  Applying the
    weights multiplies each value by its column's idf and rescales the row to
    unit L2 norm.

    Only the columns seen in training are stored (``cols`` sorted, ``values``),
    so the weights of a small model stay small.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> X = sp.csr_matrix(np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    >>> w = IdfWeights.fit(X)
    >>> w.values.round(3).tolist(), round(w.default, 3)
    ([1.0, 1.405], 2.099)
    """

    cols: np.ndarray  # int64, sorted, unique
    values: np.ndarray  # float64
    default: float
    n_documents: int

    @classmethod
    def fit(cls, X: Any) -> IdfWeights:
        """Document frequencies of the columns of a CSR matrix (any non-zero counts as present)."""
        from spamtl.rowfiles import column_counts  # training only: scoring never fits

        X = X.tocsr()
        df = column_counts(X, nonzero=True)  # a batch of rows at a time (X may be mapped from disk)
        cols = np.flatnonzero(df)
        n = int(X.shape[0])
        values = np.log((1.0 + n) / (1.0 + df[cols])) + 1.0
        return cls(cols.astype(np.int64), values, float(np.log(1.0 + n) + 1.0), n)

    def at(self, columns: np.ndarray) -> np.ndarray:
        """The idf of each column (``default`` for columns unseen in training)."""
        columns = np.asarray(columns, dtype=np.int64)
        out = np.full(len(columns), self.default)
        if len(self.cols) and len(columns):
            pos = np.minimum(np.searchsorted(self.cols, columns), len(self.cols) - 1)
            hit = self.cols[pos] == columns
            out[hit] = self.values[pos[hit]]
        return out

    def dense(self, n_features: int) -> np.ndarray:
        """The idf of every column as one array of length ``n_features``."""
        out = np.full(n_features, self.default)
        out[self.cols] = self.values
        return out

    def apply(self, row: FeatureRow) -> FeatureRow:
        """One row reweighted and rescaled to unit norm (float64 values)."""
        values = row.values.astype(np.float64) * self.at(row.indices)
        norm = float(np.sqrt(values @ values))
        return FeatureRow(row.indices, values / norm if norm > 0 else values)

    def transform(self, X: Any, chunk_rows: int = 1 << 16) -> Any:
        """A CSR matrix reweighted and each row rescaled to unit norm (a new matrix; X is not modified).

        The result has new values and, where X is canonical (sorted, no duplicate columns: nothing will
        sort them in place later), X's own index arrays; it is computed ``chunk_rows`` rows at a time, so
        the temporaries stay the size of a chunk, not of X.
        """
        import scipy.sparse as sp  # not at import: the classify fast path loads no SciPy

        X = X.tocsr()
        if not X.has_canonical_format:
            X = X.copy()  # its index arrays may be sorted in place by whoever gets the result
        idf = self.dense(X.shape[1])
        lengths = np.diff(X.indptr)
        data = np.empty(X.nnz)
        for r0 in range(0, X.shape[0], chunk_rows):
            r1 = min(r0 + chunk_rows, X.shape[0])
            e0, e1 = X.indptr[r0], X.indptr[r1]
            part = data[e0:e1]
            np.multiply(X.data[e0:e1], idf[X.indices[e0:e1]], out=part)
            norms = np.sqrt(np.bincount(np.repeat(np.arange(r1 - r0), lengths[r0:r1]), weights=part**2,
                                        minlength=r1 - r0))
            norms[norms == 0] = 1.0  # an empty row stays empty
            part /= np.repeat(norms, lengths[r0:r1])
        return sp.csr_matrix((data, X.indices, X.indptr), shape=X.shape)

    def to_bytes(self) -> bytes:
        """Compact binary form (an ``.npz`` archive, read back without pickle)."""
        import io

        buf = io.BytesIO()
        np.savez(buf, cols=self.cols.astype(np.int64), values=self.values.astype(np.float64),
                 default=np.float64(self.default), n_documents=np.int64(self.n_documents))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> IdfWeights:
        """Read :meth:`to_bytes`' form; ValueError when it is damaged (see :func:`load_sparse`)."""
        cols, values, (default, n_documents) = load_sparse(data, ("default", "n_documents"))
        return cls(cols, values, float(default), int(n_documents))


_NPZ_LOCK = threading.Lock()


def load_npz(source: Any) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file or buffer (never unpickled), read under one lock for the process.

    NumPy parses each array's header with ``ast.literal_eval``, and CPython 3.11 keeps the AST
    constructor's recursion depth in state shared by all threads: two threads parsing at once can fail
    with ``SystemError: AST constructor recursion depth mismatch`` (python/cpython#106905).  The daemon
    reads model parts in its TELL thread beside its main one.  Reading is short: one lock costs little.

    Raises
    ------
    ValueError
        Whatever the bytes are (empty, cut short, not an archive, an archive of object arrays), damage
        is this one error with a short reason (e.g. "cut short, or not .npz data"): numpy's own messages
        range from a zip error to advice to load the data unsafely with pickle.
    """
    try:
        with _NPZ_LOCK, np.load(source, allow_pickle=False) as z:
            return {name: z[name] for name in z.files}
    except Exception as exc:  # noqa: BLE001 - zipfile, zlib and numpy's parsers each raise their own
        if isinstance(exc, OSError) and isinstance(source, str | os.PathLike):
            raise  # the file cannot be opened (missing, no permission): not damage of what it holds
        raise ValueError(_npz_damage(exc)) from exc


def load_sparse(data: bytes, scalars: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """A sparse vector saved as ``.npz`` bytes: (``cols``, ``values``, the named scalars).

    Raises
    ------
    ValueError
        The bytes are damaged (see :func:`load_npz`), or their arrays are not a sparse vector: ``cols``
        non-negative integers, sorted and unique; ``values`` finite floats of the same length; each
        scalar a finite number.
    """
    z = load_npz(io.BytesIO(data))
    try:
        cols, values, extra = z["cols"], z["values"], [z[name] for name in scalars]
    except KeyError as exc:
        raise ValueError(f"no {exc.args[0]!r} array") from None
    if (cols.ndim != 1 or values.shape != cols.shape or cols.dtype.kind not in "iu" or values.dtype.kind != "f"
            or any(e.shape != () or e.dtype.kind not in "iuf" for e in extra)):
        raise ValueError("its arrays are not a sparse vector")
    if (len(cols) and (cols[0] < 0 or bool(np.any(np.diff(cols) <= 0)))) or not np.isfinite(values).all() \
            or not all(np.isfinite(e) for e in extra):
        raise ValueError("columns not sorted and unique, or values not finite")
    return cols.astype(np.int64), values.astype(np.float64), [e.item() for e in extra]


def _npz_damage(exc: Exception) -> str:
    text = str(exc)
    if isinstance(exc, EOFError):
        return "empty or cut short"
    if "Object arrays cannot be loaded" in text:
        return "pickled object arrays, never loaded"
    if "pickled" in text:  # numpy's guess for bytes that are neither .npz nor .npy
        return "not .npz data"
    if isinstance(exc, zipfile.BadZipFile) and "not a zip file" in text:
        return "cut short, or not .npz data"
    first = " ".join(text.split()[:20])
    return f"{exc.__class__.__name__}: {first}" if first else exc.__class__.__name__
