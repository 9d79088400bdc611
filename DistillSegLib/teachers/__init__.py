"""Teachers: segmentation foundation models prompted automatically or by the radiologist (see DESIGN.md).

* :mod:`.base` — the :class:`Teacher` interface, orientation and checkpoint helpers;
* :mod:`.prompts` — :class:`Prompt` and automatic boxes, points and mask prompts;
* :mod:`.slicewise`, :mod:`.litemedsam`, :mod:`.sam`, :mod:`.lora` — 2D SAM-family teachers;
* :mod:`.sam_med3d` — SAM-Med3D and SegAnyPET (3D);
* :mod:`.cache` — on-disk cache of teacher outputs; :mod:`.registry` — the teacher table
  and :func:`load_teacher`, the way in for code outside this package;
* :mod:`.run` — :func:`teacher_on_case` (a loaded teacher on a case, native grids) and
  :func:`segment_with_teacher`, used by ``distillseg predict --teacher --prompt-from``;
* :mod:`.user_prompts`, :mod:`.interactive` — the radiologist's box, clicks and corrections
  (RAS mm, brought onto each teacher's grid in one place), ``predict --prompt-box``.

Torch is imported lazily, inside functions.
"""

from .base import Teacher
from .prompts import Prompt
from .registry import load_teacher
from .run import segment_with_teacher, teacher_on_case
from .user_prompts import UserPrompt

__all__ = ["Prompt", "Teacher", "UserPrompt", "load_teacher", "segment_with_teacher", "teacher_on_case"]
