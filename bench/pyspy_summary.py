#!/usr/bin/env python3
"""Summarise py-spy ``--format raw`` files (collapsed stacks, one per mesh process and run):
self time by function, self time by source file, and inclusive time by function, as % of
on-CPU samples (py-spy leaves idle samples out unless --idle).  Stdlib only; markdown out.

    python3 bench/pyspy_summary.py bench/results/<stamp>/pyspy-*.txt
"""

from __future__ import annotations

import collections
import re
import sys

TOP = 15
PLUMBING = ("ReactorBase.", "main (", "<module>", "EPollReactor.doPoll", "callWith",
            "ContextTracker.", "_doReadOrWrite", "mainLoop", "run (", "runApp", "startReactor",
            "_runReactorWithLogging", "runReactorWithLogging", "postApplication")


def short(frame: str) -> str:
    m = re.match(r"(.*) \((.*?):(\d+)\)$", frame)
    if not m:
        return frame
    fn, path = m.group(1), m.group(2)
    path = re.sub(r".*site-packages/", "", path)
    path = re.sub(r".*/lib/python3\.\d+/", "stdlib/", path)
    path = re.sub(r".*/(edgemesh|twisted)/", r"\1/", path, count=1)
    return f"{fn} ({path})"


def summarise(fn: str) -> str:
    self_c: collections.Counter[str] = collections.Counter()
    incl_c: collections.Counter[str] = collections.Counter()
    file_c: collections.Counter[str] = collections.Counter()
    total = 0
    with open(fn) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [short(x) for x in stack.split(";")
                      if not x.startswith(("process ", "thread "))]
            if not frames:
                continue
            total += n
            self_c[frames[-1]] += n
            m = re.search(r"\((.*)\)$", frames[-1])
            file_c[m.group(1) if m else frames[-1]] += n
            for frame in set(frames):
                incl_c[frame] += n
    out = [f"\n#### {fn.rsplit('/', 1)[-1]}  ({total} on-CPU samples)\n"]
    if not total:
        return out[0]
    out.append("```")
    out.append("  self%  function (self time: the innermost Python frame; C calls are charged to")
    out.append(
        "         the frame that made them: untilConcludes = socket send(), doRead = recv(),")
    out.append("         doPoll = epoll_wait() returning ready events)")
    out += [f"  {100.0 * n / total:5.1f}  {fr}" for fr, n in self_c.most_common(TOP)]
    out.append("  self%  source file")
    out += [f"  {100.0 * n / total:5.1f}  {fr}" for fr, n in file_c.most_common(8)]
    out.append("  incl%  function (reactor/log/context plumbing frames skipped)")
    shown = [(fr, n) for fr, n in incl_c.most_common() if not any(p in fr for p in PLUMBING)]
    out += [f"  {100.0 * n / total:5.1f}  {fr}" for fr, n in shown[:TOP]]
    out.append("```")
    return "\n".join(out)


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(summarise(name))
