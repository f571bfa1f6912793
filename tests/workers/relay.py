"""A TCP relay that a test can cut (one agent loses the API while the rest of the stack keeps it) or hold (what
goes through waits, as behind a stalled service, until it is let go)."""

from __future__ import annotations

import asyncio
import contextlib


class Relay:
    """Forwards connections on a local port to ``target``; ``cut`` closes it and every connection through it."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        #: Chunks that arrived while the relay was held and are waiting to go through.
        self.held = 0
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hold(self) -> None:
        """Keep every byte sent from now on (both ways) until ``release``: calls through the relay wait."""
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()

    async def until_held(self, deadline: float = 30.0) -> None:
        """Return once something sent through the relay waits in it (the caller's call reached it)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        while not self.held:
            assert loop.time() < end, "nothing reached the held relay"
            await asyncio.sleep(0.02)

    async def cut(self) -> None:
        """Refuse new connections and drop the open ones, as an API that went away would."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if not self._flowing.is_set():
                    self.held += 1
                    await self._flowing.wait()
                    self.held -= 1
                writer.write(data)
                await writer.drain()
        writer.close()
