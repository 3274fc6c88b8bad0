"""The deploy rehearsal (infra/rehearse): the real template passes, and each broken copy under
infra/rehearse/faults/ fails with a message naming its fault. Runs the workspace's debug binaries
(`cargo build --workspace --bins` first; `make test` does)."""

import sys
import unittest
from pathlib import Path

# Runnable from the workspace root too (`python -m unittest infra/test_rehearse.py`).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rehearse import template as T
from rehearse.run import rehearse


def run(fault=None):
    lines = []
    result = rehearse(fault=fault, say=lines.append, keep_logs=False)
    return result, "\n".join(lines)


class Faults(unittest.TestCase):
    def test_every_fault_still_applies_to_the_template(self):
        sam = T.load_sam()
        names = T.fault_names()
        self.assertGreaterEqual(len(names), 3, names)
        for name in names:
            with self.subTest(fault=name):
                spec = T.load_fault(name)
                self.assertNotEqual(T.apply_fault(sam, spec), sam, f"{name} changes nothing")

    def test_each_fault_fails_naming_it(self):
        for name in T.fault_names():
            with self.subTest(fault=name):
                spec = T.load_fault(name)
                result, out = run(name)
                self.assertFalse(result.ok, f"{name} passed the rehearsal:\n{out}")
                failures = "\n".join(result.failures)
                for text in spec["expect"]:
                    self.assertIn(text, failures, f"{name}: no failure names {text!r}:\n{out}")


class RealTemplate(unittest.TestCase):
    def test_the_template_passes(self):
        result, out = run()
        self.assertTrue(result.ok, out)
        self.assertTrue(any(line.startswith("HttpApi ") for line in result.not_rehearsed), result.not_rehearsed)


if __name__ == "__main__":
    unittest.main()
