#!/usr/bin/env python3
"""Post a message to a Slack incoming webhook.

Protocol: one JSON message on stdin, one JSON reply on stdout.
- describe -> {"type": "heartbeat"}
- work     -> posts {"text": <message field>} to the webhook URL in the
              environment variable `url`, then replies with an `info`
              message: return_code 0 when Slack accepted the post, 1 with
              the reason otherwise (including a missing or invalid URL,
              which is reported before any request).

Only the Python standard library is used, so the image needs nothing
beyond python3. The body is built with json.dumps, so any message text
(quotes, newlines, non-ASCII) arrives as valid JSON.
"""
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

AGENT = "slack"
TIMEOUT_SECS = 10


def reply(job_id, message, return_code, url=None, url_label=None):
    payload = {"message": message}
    if url:
        payload["url"] = url
        payload["url_label"] = url_label or url
    print(json.dumps({
        "type": "info",
        "job_id": job_id,
        "agent": AGENT,
        "action": "popup-message",
        "payload": payload,
        "timestamp": int(time.time() * 1000),
        "return_code": return_code,
    }))
    sys.stdout.flush()


def webhook_problem(webhook):
    """Return why `webhook` cannot be a webhook URL, or None when it can be one.

    Checked before any request, so that a placeholder left in the manifest
    is reported as such instead of as a network or encoding error.
    """
    for position, character in enumerate(webhook):
        if not character.isascii():
            return (f"it contains the non-ASCII character {character!r} at position "
                    f"{position}, so it is probably still a placeholder")
    try:
        parts = urllib.parse.urlsplit(webhook)
        host = parts.hostname
    except ValueError as error:
        return f"it cannot be parsed: {error}"
    if parts.scheme not in ("http", "https") or not host:
        return "it is not an http:// or https:// URL with a host"
    return None


def post(webhook, text):
    """Post `text` to the webhook; return None on success, else the reason."""
    body = json.dumps({"text": text}).encode("utf-8")
    request = urllib.request.Request(
        webhook,
        data=body,
        headers={"Content-Type": "application/json; charset=utf-8"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECS) as response:
            response.read()
    except urllib.error.HTTPError as error:
        detail = error.read(200).decode("utf-8", "replace").strip()
        return f"Slack rejected the message: HTTP {error.code} {detail}".strip()
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        return f"could not reach the Slack webhook: {reason}"
    return None


def main():
    try:
        request = json.load(sys.stdin)
    except json.JSONDecodeError as error:
        print(f"slack agent: stdin is not JSON: {error}", file=sys.stderr)
        return 2

    if request.get("type") == "describe":
        print(json.dumps({"type": "heartbeat"}))
        return 0

    job_id = request.get("job_id")
    fields = {item.get("name"): item.get("value") for item in request.get("payload", [])}
    text = fields.get("message") or ""
    webhook = os.environ.get("url", "").strip()

    if not webhook:
        reply(job_id, "The Slack webhook URL is not set: set the environment variable `url` "
                      "to your incoming-webhook URL.", 1)
        return 0
    problem = webhook_problem(webhook)
    if problem:
        reply(job_id, f"The Slack webhook URL in the environment variable `url` is invalid: "
                      f"{problem}. Set it to your incoming-webhook URL.", 1)
        return 0
    if not text:
        reply(job_id, "Nothing to send: the message field is empty.", 1)
        return 0

    print(f"slack agent: posting {len(text)} characters", file=sys.stderr)
    failure = post(webhook, text)
    if failure:
        reply(job_id, failure, 1)
    else:
        reply(job_id, "Message sent to Slack.", 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
