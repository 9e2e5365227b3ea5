"""The case tables of docs/reliability.md, read by section: each test module that runs cases checks that
its section lists exactly its cases, with the status and the message fragment the test asserts."""

import pathlib
import re

DOC = pathlib.Path(__file__).resolve().parent.parent / 'docs' / 'reliability.md'


def rows(heading: str) -> dict[str, str]:
  """{case id: the table row} of the section whose heading line starts with `heading` (up to the next
  heading of the same or a higher level)."""
  out, inside, level = {}, False, 0
  for line in DOC.read_text().splitlines():
    if line.startswith('#'):
      this = len(line) - len(line.lstrip('#'))
      if line.startswith(heading):
        inside, level = True, this
        continue
      if inside and this <= level:
        break
    cells = [c.strip() for c in line.split(' | ')]
    if inside and line.startswith('| ') and len(cells) >= 5 and re.fullmatch(r'\| [a-z0-9]+(-[a-z0-9]+)+', cells[0]):
      out[cells[0][2:]] = line
  return out
