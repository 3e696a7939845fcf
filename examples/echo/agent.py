#!/usr/bin/env python3
"""The smallest agentrun agent: replies with the message it was sent.

It reads one JSON message on stdin and writes one JSON reply on stdout:
a heartbeat for `describe`, and for `work` an `info` reply whose popup
message is the value of the `message` field.
"""
import json
import sys
import time


def main() -> int:
    request = json.load(sys.stdin)

    if request.get("type") == "describe":
        print(json.dumps({"type": "heartbeat"}))
        return 0

    fields = {item["name"]: item["value"] for item in request.get("payload", [])}
    reply = {
        "type": "info",
        "job_id": request["job_id"],
        "agent": "echo",
        "action": "popup-message",
        "payload": {"message": fields.get("message", "")},
        "timestamp": int(time.time() * 1000),
        "return_code": 0,
    }
    print(json.dumps(reply))
    return 0


if __name__ == "__main__":
    sys.exit(main())
