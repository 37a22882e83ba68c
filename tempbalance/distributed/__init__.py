"""TempBalance under torch.distributed (DDP, FSDP2): the spectral work divided among the ranks.

``partition`` (who analyses which matrix, pure), ``transport`` (how shards reach their owner), ``coordinator``
(:class:`Coordinator`: one pass shared by the ranks). See docs/DISTRIBUTED.md.
"""
from .coordinator import Coordinator
from .transport import LayoutError

__all__ = ["Coordinator", "LayoutError"]
