#!/usr/bin/python3
"""Prints the metrics a gmond reports on its XML port as a table.

Usage: show-metrics.py PORT [HOST]

Standard library only, so it runs with Debian's /usr/bin/python3.
"""

import socket
import sys
import xml.etree.ElementTree as ET


def fetch(host, port):
    with socket.create_connection((host, port), timeout=10) as s:
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    raw = b"".join(chunks)
    # gmond declares ISO-8859-1 but passes module strings through byte for
    # byte, so UTF-8 from a Python module is really UTF-8.
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text


def rows(text):
    root = ET.fromstring(text)
    for host in root.iter("HOST"):
        for m in host.iter("METRIC"):
            extra = [(e.get("NAME", ""), e.get("VAL", "")) for e in m.iter("EXTRA_ELEMENT")]
            groups = ",".join(v for k, v in extra if k == "GROUP")
            yield {
                "host": host.get("NAME", ""),
                "name": m.get("NAME", ""),
                "value": m.get("VAL", ""),
                "units": m.get("UNITS", ""),
                "type": m.get("TYPE", ""),
                "tn": m.get("TN", ""),
                "groups": groups,
            }


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__.strip())
    port = int(sys.argv[1])
    host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
    try:
        text = fetch(host, port)
    except OSError as e:
        print(f"(cannot read gmond XML on {host}:{port}: {e})")
        return 1
    try:
        table = sorted(rows(text), key=lambda r: (r["groups"], r["name"]))
    except ET.ParseError as e:
        print(f"(gmond XML does not parse: {e})")
        return 1
    if not table:
        print("(no metrics reported yet: gmond shows a metric only after its first send)")
        return 0
    cols = [("name", "NAME"), ("value", "VALUE"), ("units", "UNITS"),
            ("type", "TYPE"), ("tn", "AGE"), ("groups", "GROUPS")]
    width = {k: max(len(title), *(len(r[k]) for r in table)) for k, title in cols}
    width["value"] = min(width["value"], 40)

    def line(values):
        return "  ".join(values[k][: width[k]].ljust(width[k]) for k, _ in cols).rstrip()

    print(line({k: title for k, title in cols}))
    print(line({k: "-" * width[k] for k, _ in cols}))
    for r in table:
        print(line(r))
    print(f"({len(table)} metrics)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
