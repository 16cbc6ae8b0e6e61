"""Names of fleet processes. A worker's name is also its lease owner and its sessions'
application_name, which is how the database knows who may take a worker edge."""

import os
import secrets
import socket


def process_name(role: str) -> str:
    host = socket.gethostname().split(".")[0][:24]
    # application_name is cut at 63 bytes; the name must survive that intact.
    return f"fleet-{role}:{host}:{os.getpid()}:{secrets.token_hex(3)}"[:63]
