"""Digests to chat and push channels through Apprise: the compact message (pure) and its sending (I/O).

A channel gets the digest its subscriber's email gets, in a compact form: the trials, their
changes in the same words (`watcher.wording` lines), and links. What is stored in the outbox
is that compact digest as data (`ChatDigest`); the message itself is made from it when it is
sent, for the service it goes to (Markdown where the service has it, plain text where not,
and within the service's size limit), the same way on every try.

Too long for the service: by default the message ends with "…and N more changes in M trials:
link"; with `?overflow=split` in the URL it is split into several messages of whole trials.

Apprise is imported only here, and only when a channel is checked or sent to.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Self

from watcher import masking
from watcher.changes import ChangeKind
from watcher.digest import Digest
from watcher.errors import DeliveryError
from watcher.mailer import Deferred, Rejected

if TYPE_CHECKING:
    from apprise.plugins.base import NotifyBase

log = logging.getLogger(__name__)

TITLE_WIDTH = 90  # a trial's title in a message, at most
MAX_PARTS = 10  # a split digest never floods a room: the tenth message ends with the link
SEARCH_URL = "https://clinicaltrials.gov/search"


# --- the compact digest, as data (stored in the outbox) ---------------------------------------


@dataclass(frozen=True)
class ChatItem:
    text: str
    strong: bool = False  # a status change: bold where the service has Markdown


@dataclass(frozen=True)
class ChatTrial:
    nct_id: str
    title: str
    url: str
    history_url: str
    new_trial: bool
    items: tuple[ChatItem, ...]


@dataclass(frozen=True)
class ChatDigest:
    heading: str  # "Trial updates · mg-azathioprine"
    trials: tuple[ChatTrial, ...]

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ChatDigest:
        raw = json.loads(data)
        trials = tuple(ChatTrial(**{**t, "items": tuple(ChatItem(**i) for i in t["items"])}) for t in raw["trials"])
        return cls(heading=raw["heading"], trials=trials)


def _shorten(text: str, width: int) -> str:
    """At most `width` characters, cut between words."""
    if len(text) <= width:
        return text
    cut = text[: width - 1]
    return (cut.rsplit(" ", 1)[0] if " " in cut[width // 2 :] else cut).rstrip(" ,;:-") + "…"


def chat_digest(digest: Digest) -> ChatDigest:
    """The compact form of a digest, from its structured lines (never from rendered text)."""
    trials = []
    for trial in digest.trials:
        items = []
        for line in trial.lines:
            text = line.text + (f' ("{line.quote}")' if line.quote else "")
            if trial.new_trial and line.kind is ChangeKind.NEW_STUDY:
                text = " · ".join(part for part in (text, trial.status, trial.summary) if part)
            items.append(ChatItem(text, strong=line.is_status))
        trials.append(
            ChatTrial(
                nct_id=trial.nct_id, title=_shorten(trial.title, TITLE_WIDTH), url=trial.url,
                history_url=trial.history_url, new_trial=trial.new_trial, items=tuple(items),
            )
        )  # fmt: skip
    return ChatDigest(heading=f"Trial updates · {', '.join(digest.watches)}", trials=tuple(trials))


# --- the message for one service (pure) -------------------------------------------------------


@dataclass(frozen=True)
class ChatMessage:
    title: str
    body: str


_MD_SPECIAL = str.maketrans({c: f"\\{c}" for c in "\\`*_[]~|"})
_LOOKALIKE = str.maketrans({"<": "‹", ">": "›"})


def _safe(text: str, markdown: bool) -> str:
    """Registry text is untrusted: on one line, no mention (@room, @everyone), no markup or raw HTML."""
    text = " ".join(text.split()).replace("@", "@\u200b").translate(_LOOKALIKE)
    return text.translate(_MD_SPECIAL) if markdown else text


@dataclass(frozen=True)
class _Block:
    text: str
    changes: int
    nct_id: str
    history_url: str


def _blocks(chat: ChatDigest, markdown: bool, width: int) -> list[_Block]:
    """One block per trial; a block longer than `width` becomes several (whole lines each)."""
    blocks = []
    for trial in chat.trials:
        title = _safe(trial.title, markdown)
        if markdown:
            label = (
                f"New trial · [{trial.nct_id}]({trial.url})" if trial.new_trial else f"[{trial.nct_id}]({trial.url})"
            )
            head = f"**{label}** {title}"
            lines = [f"• **{_safe(i.text, True)}**" if i.strong else f"• {_safe(i.text, True)}" for i in trial.items]
        else:
            head = f"{'New trial · ' if trial.new_trial else ''}{trial.nct_id} · {title}"
            lines = [f"• {_safe(i.text, False)}" for i in trial.items] + [trial.url]
        chunk: list[str] = [head]
        count = 0
        longest = max(width - len(head) - 16, 40)
        for line in lines:
            line = line if len(line) <= longest else line[: longest - 1] + "…"
            if len("\n".join([*chunk, line])) > width and len(chunk) > 1:
                blocks.append(_Block("\n".join(chunk), count, trial.nct_id, trial.history_url))
                chunk, count = [f"{head} (continued)"], 0
            chunk.append(line)
            count += 0 if line == trial.url else 1
        blocks.append(_Block("\n".join(chunk), count, trial.nct_id, trial.history_url))
    return blocks


def more_link(nct_ids: list[str], history_url: str) -> str:
    """Where the changes left out can be read: the trial's history, or a search for the trials."""
    if len(nct_ids) == 1:
        return history_url
    return f"{SEARCH_URL}?{urllib.parse.urlencode({'term': ' OR '.join(nct_ids)}, quote_via=urllib.parse.quote)}"


def _footer(rest: list[_Block], markdown: bool) -> str:
    changes = sum(b.changes for b in rest)
    ids = list(dict.fromkeys(b.nct_id for b in rest))
    link = more_link(ids, rest[0].history_url)
    what = f"{changes} more change{'s' if changes != 1 else ''}"
    if len(ids) > 1:
        what += f" in {len(ids)} trials"
    return f"…and {what}: [on ClinicalTrials.gov]({link})" if markdown else f"…and {what}: {link}"


def _fit(blocks: list[_Block], budget: int, markdown: bool) -> str:
    """The most whole blocks that fit, with a footer that names the rest and links to them."""
    taken = len(blocks)
    while True:
        body = "\n\n".join(b.text for b in blocks[:taken])
        if taken < len(blocks):
            body = "\n\n".join(filter(None, (body, _footer(blocks[taken:], markdown))))
        if len(body) <= budget or taken == 0:
            return body[:budget]
        taken -= 1


def render(chat: ChatDigest, markdown: bool, body_max: int, title_max: int, split: bool) -> list[ChatMessage]:
    """The messages that carry a compact digest to a service with these limits (0: none)."""
    count = len(chat.trials)
    title = f"{chat.heading} ({count})"
    in_body = title_max <= 0  # a service without titles: the heading opens the body
    heading = (f"**{_safe(title, True)}**" if markdown else _safe(title, False)) if in_body else ""
    budget = (body_max if body_max > 0 else 1 << 30) - (len(heading) + 2 if in_body else 0) - 12
    blocks = _blocks(chat, markdown, max(budget - 160, 80))
    bodies: list[str] = []
    while blocks:
        if split and len(bodies) < MAX_PARTS - 1:
            part: list[_Block] = []
            while blocks and len("\n\n".join(b.text for b in [*part, blocks[0]])) <= budget:
                part.append(blocks.pop(0))
            if not part:  # cannot happen: blocks are cut to fit
                part.append(blocks.pop(0))
            bodies.append("\n\n".join(b.text for b in part))
        else:
            bodies.append(_fit(blocks, budget, markdown))
            blocks = []
    messages = []
    for n, body in enumerate(bodies, 1):
        numbered = f"{title} · {n}/{len(bodies)}" if len(bodies) > 1 else title
        if in_body:
            head = f"**{_safe(numbered, True)}**" if markdown else _safe(numbered, False)
            messages.append(ChatMessage("", f"{head}\n\n{body}"))
        else:
            messages.append(ChatMessage(_shorten(numbered, title_max), body))
    return messages


# --- checking a URL ------------------------------------------------------------------------------


def target_of(template: str) -> str:
    """How an outbox row names its channel without holding any secret: the scheme and a digest of
    the URL as written in the config."""
    return f"{masking.scheme_of(template)}:{hashlib.sha256(template.encode()).hexdigest()[:12]}"


def _manager() -> Any:
    from apprise import NotificationManager

    return NotificationManager()  # type: ignore[no-untyped-call]


def check_url(template: str) -> None:
    """ValueError (one line, naming the scheme, never the URL) unless Apprise can parse the URL.
    With an `{env:NAME}` that is not set here, only the scheme is checked."""
    scheme = masking.scheme_of(template)
    manager = _manager()
    if scheme not in manager:
        import difflib

        close = difflib.get_close_matches(scheme, [str(s) for s in manager.schemas()], n=1)
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        raise ValueError(f'"{scheme}://" is not a kind of URL Apprise knows{hint}')
    try:
        url = masking.expand(template)
    except masking.MissingSecret:
        return
    with _apprise_log() as said:
        plugin = _instantiate(url)
    if plugin is None:
        reason = f" ({said[-1]})" if said else ""
        raise ValueError(f"Apprise cannot parse this {scheme}:// URL{reason}")


# --- sending (I/O) ----------------------------------------------------------------------------


_capture = threading.local()


class _Swallow(logging.Filter):
    """While a thread sends through Apprise, Apprise's log lines are its reasons: kept, not logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        lines = getattr(_capture, "lines", None)
        if lines is None:
            return True
        if record.levelno >= logging.WARNING:
            lines.append(masking.mask(record.getMessage()))
        return False


_swallow_installed = threading.Lock()
_SWALLOW = _Swallow()


@contextmanager
def _apprise_log() -> Iterator[list[str]]:
    masking.install()
    apprise_logger = logging.getLogger("apprise")
    with _swallow_installed:
        if _SWALLOW not in apprise_logger.filters:
            apprise_logger.addFilter(_SWALLOW)
    lines: list[str] = []
    _capture.lines = lines
    try:
        yield lines
    finally:
        _capture.lines = None


def _instantiate(url: str) -> NotifyBase | None:
    from apprise import Apprise

    plugin: NotifyBase | None = Apprise.instantiate(url)
    return plugin


def _prepare(template: str) -> tuple[NotifyBase, str]:
    """The Apprise plugin for a URL template, and the URL as people may see it."""
    shown = masking.shown_url(template)
    try:
        url = masking.expand(template)
    except masking.MissingSecret as exc:
        raise Deferred(f"{exc} (the channel {shown} needs it)") from None
    with _apprise_log() as said:
        plugin = _instantiate(url)
    if plugin is None:
        reason = f" ({said[-1]})" if said else ""
        raise Rejected(f"Apprise cannot parse the {masking.scheme_of(template)}:// URL{reason}")
    return plugin, shown


def messages_for(plugin: NotifyBase, chat: ChatDigest) -> tuple[list[ChatMessage], bool]:
    """The messages for this service (its format, limits and `?overflow=`); whether they are Markdown."""
    from apprise import NotifyFormat, OverflowMode

    resolved = plugin.resolve_format(NotifyFormat.MARKDOWN)
    markdown = resolved in (NotifyFormat.MARKDOWN, NotifyFormat.HTML)
    split = plugin.overflow_mode == OverflowMode.SPLIT
    return render(chat, markdown, int(plugin.body_maxlen or 0), int(plugin.title_maxlen or 0), split), markdown


class ChannelSender:
    """Sends compact digests through Apprise. A service that does not accept a message (Apprise says
    False: an HTTP error, a refused connection, a timeout) is a temporary failure: `Deferred`."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def send(self, template: str, chat: ChatDigest, parts_sent: int = 0) -> int:
        """Send the messages of a digest from part `parts_sent` on; returns how many there are.
        Raises Deferred or Rejected with `parts_sent` set to the parts that went out."""
        plugin, shown = _prepare(template)
        messages, markdown = messages_for(plugin, chat)
        for n in range(parts_sent, len(messages)):
            self._send_one(plugin, shown, messages[n], markdown, n, len(messages))
        return len(messages)

    def send_messages(self, template: str, messages: list[ChatMessage], markdown: bool) -> None:
        plugin, shown = _prepare(template)
        for n, message in enumerate(messages):
            self._send_one(plugin, shown, message, markdown, n, len(messages))

    @staticmethod
    def _send_one(plugin: NotifyBase, shown: str, message: ChatMessage, markdown: bool, n: int, total: int) -> None:
        from apprise import NotifyFormat, NotifyType, OverflowMode

        with _apprise_log() as said:
            try:
                ok = plugin.notify(
                    body=message.body, title=message.title, notify_type=NotifyType.INFO,
                    body_format=NotifyFormat.MARKDOWN if markdown else NotifyFormat.TEXT,
                    overflow=OverflowMode.UPSTREAM,  # it fits already: Apprise must not cut it again
                )  # fmt: skip
            except Exception as exc:  # a plugin's bug must not stop the other messages
                said.append(f"{type(exc).__name__}: {exc}")
                ok = False
        if not ok:
            part = f" (message {n + 1} of {total})" if total > 1 else ""
            reason = masking.mask(said[-1]) if said else "no reason given"
            error = Deferred(f"{shown} did not take the message{part}: {reason}")
            error.parts_sent = n
            raise error


def send_sample(template: str, digest: Digest) -> int:
    """`watcher test-notify`: a sample digest through one URL, nothing stored. Returns the messages sent."""
    return ChannelSender().send(template, chat_digest(digest))


def send_alert(templates: tuple[str, ...], subject: str, text: str) -> list[str]:
    """Operator alerts through `[alerts] notify`; returns one line per URL that failed."""
    failures = []
    for template in templates:
        try:
            ChannelSender().send_messages(template, [ChatMessage(subject, text)], markdown=False)
        except DeliveryError as exc:
            failures.append(str(exc))
    return failures
