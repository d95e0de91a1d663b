"""
Replies go out on the socket at once (emaild/inbound/lines.py,
C{LineSession._write}) and fall back to the transport when the socket does
not take them whole: over loopback, with real socket buffers.
"""

from __future__ import annotations

import socket
import time

from tests.inbound.test_inbound_server import Raw, ServerTestCase

#: three commands with three different replies, repeated: the order shows
COMMANDS = [(b"HELP\r\n", 214), (b"NOOP\r\n", 250), (b"VRFY someone\r\n", 252)]


class ReplyWriteTests(ServerTestCase):
    async def test_replies_beyond_the_socket_buffers_arrive_whole_and_in_order(self):
        port, factory, handler = self.start(max_commands=5000)
        rounds = 600
        c = await self.in_thread(Raw, port, 10.0)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.assertEqual((await self.in_thread(c.reply))[0], 220)
        [session] = factory.sessions
        server_socket = session.transport.getHandle()
        server_socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        room = (server_socket.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
                + c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))

        def talk():
            c.send(b"".join(command for command, _ in COMMANDS) * rounds)
            time.sleep(0.3)  # the server answers everything while nothing is read
            return c.replies(len(COMMANDS) * rounds)

        replies = await self.in_thread(talk)
        self.assertEqual([code for code, _ in replies],
                         [code for _, code in COMMANDS] * rounds)
        self.assertEqual(len({text for code, text in replies if code == 214}), 1)
        sent = sum(len(text) + 6 for _, text in replies)
        # most of it cannot have fitted in the kernel's buffers: the
        # transport's own buffer took the rest, after the first partial send
        self.assertGreater(sent, 5 * room)
        c.send(b"QUIT\r\n")
        self.assertEqual((await self.in_thread(c.reply))[0], 221)
        self.assertTrue(await self.in_thread(c.closed))

    async def test_a_client_at_its_session_cap_may_reconnect_as_soon_as_it_reads_221(self):
        """
        The last reply goes out before the reactor closes the socket, so the
        session's slot is freed with it: a client that connects again at
        once is not refused for a session that has already said goodbye.
        """
        port, factory, handler = self.start(max_sessions_per_client=1)

        def twice():
            codes = []
            for _ in range(20):
                c = Raw(port)
                codes.append(c.reply()[0])
                c.send(b"QUIT\r\n")
                codes.append(c.reply()[0])
            return codes

        self.assertEqual(await self.in_thread(twice), [220, 221] * 20)
