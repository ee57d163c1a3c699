#!/usr/bin/env python3
"""Prints, for each container of a rendered manifest whose image is one of
the given upstream names, "NAME ARG..." with the kubelet's $(VAR) expansion
done, one line per container (tests/chart/run feeds them to the real
binaries to see that every flag exists).

usage: sidecar-args.py MANIFEST IMAGE_NAME...
"""
import re
import shlex
import sys

import yaml

manifest, names = sys.argv[1], set(sys.argv[2:])
for d in yaml.safe_load_all(open(manifest)):
    if not d or d["kind"] not in ("Deployment", "DaemonSet"):
        continue
    for c in d["spec"]["template"]["spec"]["containers"]:
        image = c["image"].rsplit("/", 1)[-1].split(":")[0].split("@")[0]
        if image in names:
            args = [re.sub(r"\$\((\w+)\)", "test-" + r"\1", a) for a in c.get("args", [])]
            print(image, " ".join(shlex.quote(a) for a in args))
