"""Extra memory of a 1 GiB cross-entropy, and the cost of a first call."""

import resource

import numpy as np

import nbce


class PeakMemory:
    """Growth of the peak RSS during cross_entropy on 1 GiB of float32 logits (resident)."""

    unit = "MB"
    timeout = 300

    def setup(self):
        self.logits = np.empty((8192, 32768), np.float32)
        self.logits[:] = 0.25  # touch every page before measuring
        self.target = np.arange(8192) % 32768
        nbce.cross_entropy(np.zeros((2, 4), np.float32), np.zeros(2, np.int64))
        nbce.cross_entropy(np.zeros((2, 4), np.float32), np.zeros(2, np.int64), label_smoothing=0.1)

    def _growth_mb(self, **options):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        nbce.cross_entropy(self.logits, self.target, **options)
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024

    def track_peak_rss_growth_cross_entropy_1gib(self):
        return self._growth_mb()

    def track_peak_rss_growth_smoothed_cross_entropy_1gib(self):
        return self._growth_mb(label_smoothing=0.1)


class FirstCall:
    """A new process's first call: import plus loading the cached machine code."""

    def timeraw_import_and_first_call(self):
        return """
        import numpy as np
        import nbce
        nbce.cross_entropy(np.zeros((4, 8), np.float32), np.zeros(4, np.int64))
        """

    def timeraw_import_only(self):
        return "import nbce"
