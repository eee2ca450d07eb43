"""A progress line on stderr: tqdm when installed (the ``cli`` extra), else a plain one."""

import sys
import time


class Progress:
    """Counts rows and bytes; shows rows/s and GB/s.  ``enabled=False`` shows nothing."""

    def __init__(self, total_rows=None, enabled=True, description="scoring"):
        self._bar = None
        self._plain = False
        self.rows = 0
        self.bytes = 0
        self._start = time.perf_counter()
        self._last_shown = 0.0
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            self._plain = True
            self._total = total_rows
            return
        self._bar = tqdm(total=total_rows, unit="rows", unit_scale=True, desc=description, file=sys.stderr,
                         dynamic_ncols=True, leave=False)

    @property
    def seconds(self):
        return time.perf_counter() - self._start

    def gigabytes_per_second(self):
        return self.bytes / max(self.seconds, 1e-9) / 1e9

    def update(self, rows, nbytes):
        self.rows += rows
        self.bytes += nbytes
        if self._bar is not None:
            self._bar.set_postfix_str(f"{self.gigabytes_per_second():.2f} GB/s", refresh=False)
            self._bar.update(rows)
        elif self._plain and self.seconds - self._last_shown > 0.5:
            self._last_shown = self.seconds
            of = f"/{self._total}" if self._total else ""
            sys.stderr.write(f"\rscoring: {self.rows}{of} rows, {self.rows / self.seconds:,.0f} rows/s, "
                             f"{self.gigabytes_per_second():.2f} GB/s")
            sys.stderr.flush()

    def close(self):
        if self._bar is not None:
            self._bar.close()
        elif self._plain and self._last_shown:
            sys.stderr.write("\n")
