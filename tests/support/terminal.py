"""Running a command in a Jupyter server's terminal, as a user of JupyterLab's terminal does.

The terminal is opened through Jupyter's REST API (``POST api/terminals``) and driven over its
websocket (``terminals/websocket/<name>``): the same login shell JupyterLab gives a user.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid

import httpx
import websockets

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


async def terminal_run(server_url: str, token: str, command: str, timeout: float = 60) -> str:
    """Run ``command`` in a new terminal of the server at ``server_url`` (ending in /); return its output.

    The output is what the terminal printed between two markers printed before and after the
    command, with the terminal's colour codes and carriage returns removed.
    """
    marker = uuid.uuid4().hex
    # Printed with a format, so the echoed command line (which the shell may wrap or redraw) never
    # contains the markers themselves: only the command's own output lies between them.
    line = f"printf '%s-%s\\n' {marker} begin; {command}; printf '%s-%s\\n' {marker} end\r"
    headers = {"Authorization": f"token {token}"}
    async with httpx.AsyncClient(headers=headers, timeout=30) as http:
        r = await http.post(server_url + "api/terminals")
        assert r.status_code == 200, (r.status_code, r.text[:300])
        name = r.json()["name"]
        try:
            ws_url = re.sub(r"^http", "ws", server_url) + f"terminals/websocket/{name}"
            async with websockets.connect(ws_url, additional_headers=headers, open_timeout=30) as ws:
                # Wide enough that the shell does not wrap the echoed command line.
                await ws.send(json.dumps(["set_size", 50, 1000, 600, 8000]))
                await ws.send(json.dumps(["stdin", line]))
                printed = ""
                async with asyncio.timeout(timeout):
                    while f"{marker}-end" not in printed:
                        message = json.loads(await ws.recv())
                        if message[0] == "stdout":
                            printed += message[1]
        finally:
            await http.delete(server_url + f"api/terminals/{name}")
    text = _ANSI.sub("", printed).replace("\r", "")
    between = text.split(f"{marker}-begin\n", 1)
    assert len(between) == 2, f"the terminal printed no start marker: {text!r}"
    return between[1].split(f"{marker}-end", 1)[0].strip()
