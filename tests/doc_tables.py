"""The case tables of docs/reliability.md, read by section: each test module that runs cases checks that
its section lists exactly its cases, with the status and the message fragment the test asserts."""

import os
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


def record(case_id: str, category: str, what: str, status, message: str) -> None:
  """Appends a case's row to the file $BRT_RELIABILITY_TABLE names, if it is set (how the tables are made)."""
  target = os.environ.get('BRT_RELIABILITY_TABLE')
  if target:
    message = message.replace('|', '\\|')
    with open(target, 'a', encoding='utf-8') as f:
      f.write(f'| {case_id} | {category} | {what} | {status} | `` {message} `` |\n')
