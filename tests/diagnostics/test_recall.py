"""The long-range recall diagnostic: its documents put facts and answers exactly where it says, its models
are matched in size, and its command trains, scores and writes its table and files."""

import json

import numpy as np
import pytest

from block_recurrent.diagnostics import recall


@pytest.mark.parametrize('gap', [3, 4, 9, 100])
def test_scoring_documents_put_the_answer_exactly_gap_tokens_after_the_fact(gap):
  task = recall.Task(facts=3)
  tokens, mask, gaps = recall.make_documents(np.random.default_rng(0), 4, 128, task, gap=gap)
  assert (gaps == gap).all()
  for row, m in zip(tokens, mask):
    (query_key,) = np.flatnonzero(m)
    answer = query_key + 1
    assert answer == len(row) - 1 and row[query_key - 1] == recall.QUERY
    facts = np.flatnonzero(np.isin(row[:query_key - 1], recall.KEYS))
    assert len(facts) == task.facts and len(set(row[facts])) == task.facts  # distinct keys
    (fact,) = facts[row[facts] == row[query_key]]
    assert row[fact + 1] == row[answer] and answer - (fact + 1) == gap
    assert np.isin(row[np.r_[:facts[0], facts[-1] + 2:query_key - 1]], np.arange(recall.FILLER)).all()


def test_training_documents_query_only_stated_facts():
  tokens, mask, _ = recall.make_documents(np.random.default_rng(1), 8, 256, recall.Task(facts=2, queries=8))
  assert (mask.sum(axis=1) == 8).all()
  for row, m in zip(tokens, mask):
    stated = {}
    for t in range(len(row) - 1):
      if row[t] in recall.KEYS and row[t - 1] != recall.QUERY:
        stated[row[t]] = row[t + 1]
    for t in np.flatnonzero(m):
      assert row[t - 1] == recall.QUERY and stated[row[t]] == row[t + 1]


def test_impossible_gaps_are_clear_errors():
  with pytest.raises(ValueError, match='needs documents longer than 64'):
    recall.make_documents(np.random.default_rng(0), 1, 64, recall.Task(), gap=64)
  with pytest.raises(ValueError, match='gaps must be at least 3'):
    recall.make_documents(np.random.default_rng(0), 1, 64, recall.Task(), gap=2)


def test_models_are_matched_within_three_percent():
  target = recall.non_embedding_params(recall.base_config('relit', 128))
  for kind in recall.MODELS:
    count = recall.non_embedding_params(recall.matched_config(kind, target))
    assert abs(count - target) / target < 0.03, (kind, count, target)


def test_command_trains_scores_and_writes(tmp_path, capsys):
  out = tmp_path / 'recall'
  assert recall.main(['--models', 'xl', '--steps', '3', '--batch', '4', '--gaps', '4', '200',
                      '--examples', '64', '--out', str(out)]) == 0
  printed = capsys.readouterr().out
  assert '| xl |' in printed and 'G=200' in printed
  rows = json.loads(out.with_suffix('.json').read_text())
  assert [r['model'] for r in rows] == ['xl']
  for r in rows:
    assert set(r['accuracy']) == {'4', '200'} and all(0.0 <= a <= 1.0 for a in r['accuracy'].values())
    assert np.isfinite(r['final_loss'])
