"""A real SMTP server on 127.0.0.1 (aiosmtpd) that records what it accepts and can be told to refuse."""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def free_port() -> int:
    """A port nothing listens on now (another process may take it later: prefer letting the server pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Controller(Controller):
    """aiosmtpd's Controller; with port 0 it listens on a port the OS picks (no race with parallel tests)."""

    async def _listen(self) -> asyncio.AbstractServer:
        server = await super()._create_server()
        self.port = server.sockets[0].getsockname()[1]  # before start() connects to it to check it is up
        return server

    def _create_server(self) -> Any:
        return self._listen()


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)  # type: ignore[return-value]

    def part(self, subtype: str) -> str:
        body = self.message.get_body(preferencelist=(subtype,))
        assert body is not None
        return body.get_content()


@dataclass
class Recorder:
    received: list[Received] = field(default_factory=list)
    rcpt_replies: dict[str, str] = field(default_factory=dict)  # address → reply, e.g. "550 5.1.1 no such user"
    data_replies: list[str] = field(default_factory=list)  # replies to the next DATA commands
    data_delay_s: float = 0.0  # wait this long before answering DATA (a slow server)
    # take each message, then never answer: the client cannot know the server has it (until it goes away)
    take_and_hang: bool = False
    data_started: int = 0  # DATA commands seen
    data_ended: int = 0  # DATA commands answered, or dropped because the client went away

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.data_started += 1
        try:
            return await self._answer_data(envelope)
        finally:  # also when aiosmtpd cancels the handler because the client went away
            self.data_ended += 1

    async def _answer_data(self, envelope: Any) -> str:
        if self.take_and_hang:
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
            await asyncio.Event().wait()
        if self.data_delay_s:
            await asyncio.sleep(self.data_delay_s)
        if self.data_replies:
            return self.data_replies.pop(0)
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[Received]:
        return [r for r in self.received if address in r.recipients]


class SmtpServer:
    def __init__(
        self,
        port: int | None = None,
        tls: ssl.SSLContext | None = None,
        users: dict[str, str] | None = None,
        implicit_tls: bool = False,
    ) -> None:
        self.port = port or 0  # 0: the OS picks one at start()
        self.recorder = Recorder()
        self.tls, self.users, self.implicit_tls = tls, users, implicit_tls
        self.controller: Controller | None = None
        self.logins: list[str] = []

    def _auth(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        if isinstance(data, LoginPassword) and self.users is not None:
            user, password = data.login.decode(), data.password.decode()
            if self.users.get(user) == password:
                self.logins.append(user)
                return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    def start(self) -> SmtpServer:
        kwargs: dict[str, Any] = {}
        if self.tls is not None and not self.implicit_tls:
            kwargs.update(tls_context=self.tls, require_starttls=True)
        if self.tls is not None and self.implicit_tls:
            kwargs.update(ssl_context=self.tls)
        if self.users is not None:
            kwargs.update(authenticator=self._auth, auth_require_tls=self.tls is not None)
        self.controller = _Controller(self.recorder, hostname="127.0.0.1", port=self.port, **kwargs)
        self.controller.start()
        self.port = self.controller.port
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    @property
    def received(self) -> list[Received]:
        return self.recorder.received
