"""Per-call measurements: token counts, speeds, time to first token, memory."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


@dataclass
class Metrics:
    """What one generation call cost."""

    prompt_tokens: int = 0
    reused_tokens: int = 0
    generated_tokens: int = 0
    ttft_s: float = 0.0
    prompt_tps: float = 0.0
    gen_tps: float = 0.0
    peak_rss_mb: float = 0.0
    media_encode_s: float = 0.0  # time the image/audio encoders took (included in ttft_s)

    @property
    def evaluated_prompt_tokens(self) -> int:
        return self.prompt_tokens - self.reused_tokens

    def as_dict(self) -> dict[str, float | int]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}

    def to_json(self) -> str:
        return json.dumps(self.as_dict())
