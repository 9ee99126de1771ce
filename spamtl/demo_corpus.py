"""Generate the demo corpus: eight users in three groups who genuinely disagree.

Deterministic from a seed.  Every user gets labelled ham and spam mboxes and
a few held-back "incoming" messages.  The mail is realistic RFC 5322 / MIME:
plain and HTML bodies, a few attachments, a few deliberately malformed
messages.  What makes it a multi-task problem:

- shared spam campaigns (pills, lottery, phishing, crypto) that everyone rejects;
- ham in different languages and about different interests per group;
- gray mail (a tech newsletter, shop promotions, a Russian news digest) that
  some users want and others call spam;
- two users with very few labels, who must lean on everyone else.

This module uses only the standard library.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

__all__ = ["USERS", "generate", "write_corpus"]

SPAM = {
    "pills": ("cheap meds online pharmacy viagra cialis pills discount prescription no doctor order "
              "generic overnight shipping men health enlarge"),
    "lottery": ("congratulations winner lottery prize claim million dollars transfer bank account beneficiary "
                "urgent confidential next of kin fund release fee"),
    "phishing": ("your account has been suspended verify password login security alert bank update "
                 "credentials click link immediately unusual activity confirm identity"),
    "crypto": ("bitcoin investment guaranteed returns crypto trading bot double your money profit "
               "exclusive opportunity limited spots wallet deposit"),
}
HAM = {
    "physics": ("seminar lecture quantum lattice experiment detector grant proposal colloquium thesis "
                "students referee manuscript arxiv beamtime cryostat deadline faculty meeting"),
    "family": ("hallo liebe familie wochenende geburtstag oma kuchen abendessen sonntag besuch kinder "
               "schule urlaub fotos garten grillen bis bald herzliche gruesse"),
    "shop": ("invoice order shipment supplier warehouse pallet delivery quote customer payment terms "
             "stock inventory reorder logistics purchase schedule"),
    "russian": ("привет коллеги заказ поставка склад оплата счет клиент доставка встреча завтра "
                "отчет договор спасибо пожалуйста"),
}
GRAY = {
    "technews": ("this week in tech newsletter digest new releases open source kernel python database "
                 "conference talks unsubscribe read more"),
    "promo": ("big summer sale discount coupon code free shipping new arrivals shop now limited offer "
              "unsubscribe fashion deals"),
    "rusdigest": ("новости недели дайджест рассылка экономика спорт культура погода читать далее "
                  "отписаться подписка"),
}
COMMON = "the and for with you this that from your our will have are please today more about all".split()
_SYLLABLES = "ka lo mi re su ta ne vi do pa ri ze mo lu fi ga no be sa ti".split()


def _vocabulary(topic: str, base: str, size: int = 160) -> list[str]:
    """The topic's words plus deterministic pseudo-words: campaigns vary their wording a lot."""
    rng = random.Random(f"vocab-{topic}")
    extra = {"".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(size * 2)}
    return base.split() + sorted(extra)[:size]


@dataclass(frozen=True)
class DemoUser:
    name: str
    group: str
    ham_topics: tuple[str, ...]
    wants: tuple[str, ...]  # gray mail this user wants (ham); other gray mail is spam for them
    receives: tuple[str, ...]  # gray mail this user gets at all
    n_ham: int
    n_spam: int


USERS = (
    DemoUser("ann", "physics", ("physics",), ("technews",), ("technews", "promo"), 70, 60),
    DemoUser("ben", "physics", ("physics",), (), ("technews", "promo"), 60, 60),
    DemoUser("cem", "physics", ("physics",), ("technews",), ("technews",), 8, 6),
    DemoUser("dora", "family", ("family",), ("promo",), ("promo", "rusdigest", "technews"), 60, 60),
    DemoUser("emil", "family", ("family",), ("promo",), ("promo", "rusdigest"), 7, 7),
    DemoUser("fyodor", "shop", ("shop", "russian"), ("rusdigest", "promo"), ("rusdigest", "promo", "technews"), 60, 50),
    DemoUser("gina", "shop", ("shop",), ("promo",), ("promo", "technews", "rusdigest"), 60, 60),
    DemoUser("hugo", "shop", ("shop", "russian"), ("rusdigest",), ("rusdigest", "promo"), 50, 60),
)
HELD_BACK = 4
_START = datetime(2025, 1, 6, 8, 0, tzinfo=UTC)
_SENDERS = {
    "pills": ["sales@rx-{n}.example.biz", "pharmacy{n}@meds-deal.example"],
    "lottery": ["claims{n}@intl-lotto.example", "barrister.{n}@legal-fund.example"],
    "phishing": ["security@secure-bank-{n}.example", "alert{n}@paypa1-support.example"],
    "crypto": ["team@coin-profit{n}.example", "vip{n}@btc-fortune.example"],
    "technews": ["digest@technews.example"],
    "promo": ["offers@bigshop.example"],
    "rusdigest": ["rassylka@novosti.example.ru"],
    "physics": ["{who}@phys.uni.example.edu"],
    "family": ["{who}@familie.example.de"],
    "shop": ["{who}@partner-{n}.example.com"],
    "russian": ["{who}@postavka.example.ru"],
}
_NAMES = ["maria", "jonas", "lea", "ivan", "olga", "tom", "sara", "paul", "nina", "omar"]


def _words(rng: random.Random, topic: list[str], n: int) -> str:
    return " ".join(rng.choice(topic) if rng.random() < 0.5 else rng.choice(COMMON) for _ in range(n))


def _message(rng: random.Random, topic: str, words: list[str], serial: int, to: str) -> bytes:
    sender = rng.choice(_SENDERS[topic]).format(n=rng.randint(1, 40), who=rng.choice(_NAMES))
    when = _START + timedelta(minutes=serial * 37 + rng.randint(0, 30))
    subject = _words(rng, words, rng.randint(3, 6)).capitalize()
    body = "\n".join(_words(rng, words, rng.randint(6, 12)) for _ in range(rng.randint(1, 3)))
    charset = "utf-8"
    headers = [f"From: {sender}", f"To: {to}@mail.example.org", f"Subject: {subject}",
               f"Date: {format_datetime(when)}", f"Message-ID: <demo-{serial}-{rng.randint(0, 10**9)}@demo.example>",
               "MIME-Version: 1.0"]
    if topic in SPAM or topic == "promo":
        headers.append(f"X-Mailer: {rng.choice(['MassMailer 3.2', 'BulkSend Pro', 'Outlook Express 6.0'])}")
    elif topic in ("physics", "family", "shop", "russian"):
        headers.append(f"X-Mailer: {rng.choice(['Thunderbird 115', 'Apple Mail', 'Evolution 3.46'])}")
    kind = rng.random()
    if topic in SPAM and kind < 0.08:  # malformed: the MIME boundary never closes, the charset is bogus
        text = (f"--b{serial}\nContent-Type: text/plain; charset=x-unknown-{serial % 7}\n\n{body}\n").encode()
        head = "\n".join(headers + [f'Content-Type: multipart/alternative; boundary="b{serial}"'])
        return head.encode() + b"\n\n" + text
    if (topic in SPAM or topic in GRAY) and kind < 0.5:  # HTML with a link
        link = f"http://{sender.split('@')[1]}/{rng.randint(100, 999)}"
        html = f"<html><body><h2>{subject}</h2><p>{body.replace(chr(10), '<br>')}</p>" \
               f"<a href=\"{link}\">{_words(rng, words, 2)}</a></body></html>"
        head = "\n".join(headers + [f'Content-Type: text/html; charset="{charset}"',
                                    "Content-Transfer-Encoding: 8bit"])
        return head.encode() + b"\n\n" + html.encode()
    if kind > 0.93:  # an attachment
        name, ctype = ("report.pdf", "application/pdf") if topic not in SPAM else ("invoice.zip", "application/zip")
        head = "\n".join(headers + [f'Content-Type: multipart/mixed; boundary="m{serial}"'])
        parts = (f"--m{serial}\nContent-Type: text/plain; charset={charset}\n\n{body}\n"
                 f"--m{serial}\nContent-Type: {ctype}; name=\"{name}\"\nContent-Disposition: attachment; "
                 f"filename=\"{name}\"\nContent-Transfer-Encoding: base64\n\nJVBERi0xLjQKJcfsj6IKNSAwIG9iago=\n"
                 f"--m{serial}--\n")
        return head.encode() + b"\n\n" + parts.encode()
    head = "\n".join(headers + [f"Content-Type: text/plain; charset={charset}", "Content-Transfer-Encoding: 8bit"])
    return head.encode() + b"\n\n" + body.encode() + b"\n"


def generate(seed: int = 7) -> dict[str, dict[str, list[bytes]]]:
    """{user: {"ham": [...], "spam": [...], "incoming_ham": [...], "incoming_spam": [...]}}."""
    rng = random.Random(seed)
    vocab = {topic: _vocabulary(topic, base) for topic, base in {**SPAM, **HAM, **GRAY}.items()}
    serial = 0
    corpus: dict[str, dict[str, list[bytes]]] = {}
    for user in USERS:
        boxes: dict[str, list[bytes]] = {"ham": [], "spam": []}
        for label, count in (("ham", user.n_ham + HELD_BACK), ("spam", user.n_spam + HELD_BACK)):
            for _ in range(count):
                serial += 1
                gray_share = 0.35
                if label == "ham":
                    wanted = [g for g in user.receives if g in user.wants]
                    topic = rng.choice(wanted) if wanted and rng.random() < gray_share else rng.choice(user.ham_topics)
                else:
                    unwanted = [g for g in user.receives if g not in user.wants]
                    topic = rng.choice(unwanted) if unwanted and rng.random() < gray_share else rng.choice(list(SPAM))
                words = vocab[topic]
                boxes[label].append(_message(rng, topic, words, serial, user.name))
        corpus[user.name] = {
            "ham": boxes["ham"][HELD_BACK:], "spam": boxes["spam"][HELD_BACK:],
            "incoming_ham": boxes["ham"][:HELD_BACK], "incoming_spam": boxes["spam"][:HELD_BACK],
        }
    return corpus


def _mbox(messages: list[bytes]) -> bytes:
    out = []
    for raw in messages:
        body = raw.replace(b"\nFrom ", b"\n>From ")
        out.append(b"From demo@demo.example Mon Jan  6 08:00:00 2025\n" + body.rstrip(b"\n") + b"\n\n")
    return b"".join(out)


def write_corpus(folder: Path, seed: int = 7) -> Path:
    """Write ``folder/USER/{ham,spam,incoming}.mbox`` and ``folder/users.json``; returns ``folder``."""
    corpus = generate(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for user, boxes in corpus.items():
        (folder / user).mkdir(exist_ok=True)
        for name in ("ham", "spam"):
            (folder / user / f"{name}.mbox").write_bytes(_mbox(boxes[name]))
        (folder / user / "incoming.mbox").write_bytes(_mbox(boxes["incoming_ham"] + boxes["incoming_spam"]))
    meta = {u.name: {"group": u.group, "wants": list(u.wants), "incoming_truth": ["ham"] * HELD_BACK + ["spam"] * HELD_BACK}
            for u in USERS}
    (folder / "users.json").write_text(json.dumps({"seed": seed, "users": meta}, indent=2) + "\n")
    return folder
