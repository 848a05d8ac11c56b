"""An agent that finds `llm.inference` workers in its network and calls each over HTTP.

    python3 examples/find_inference.py "your prompt"     (with sdk/python on PYTHONPATH, or pip-installed)
"""

import json
import re
import sys
import urllib.request

import agentvpn

prompt = sys.argv[1] if len(sys.argv) > 1 else "hello"
vpn = agentvpn.connect()
workers = [w for w in vpn.discover("llm.inference") if w["online"]]
if not workers:
    sys.exit("no llm.inference worker is online")
for w in workers:
    # The worker says where it listens in its capability (`llm.inference@1;model=echo;port=8080`).
    cap = next((c for c in w["capabilities"] if c.startswith("llm.inference")), "")
    m = re.search(r";port=(\d+)", cap)
    port = m.group(1) if m else "8080"
    req = urllib.request.Request(f"http://{w['ipv4']}:{port}/v1/completions", data=json.dumps({"prompt": prompt}).encode(),
                                 headers={"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as res:
        print(f"{w['name']} ({w['ipv4']}): {res.status} {res.read().decode()}")
