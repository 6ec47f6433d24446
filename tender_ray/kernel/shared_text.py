"""Content-addressed text on the machine a process moves to: a process here whose text has the
arriving image's digest (`migration.image.text_digest`) lends its frames, pinned as one more
mapper's (`RealMemory.share`), and transform II maps them read-only into the arriving process
instead of copying text that travelled, as processes of one program share text frames in a
real operating system."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tender_ray.errors import TextNotHeldError
from tender_ray.migration.image import AreaImage, ProcessImage, text_digest
from tender_ray.resources.process import Process
from tender_ray.resources.real_memory import RealMemory
from tender_ray.resources.virtual_region import NOT_PRESENT, RegionKind
from tender_ray.resources.virtual_space import VirtualSpace
from tender_ray.resources.virtual_user_space import PROT_WRITE, VirtualUserSpace

HeldText = tuple[list[AreaImage], npt.NDArray[np.int64]]  # text areas, present frames


@dataclass
class PinnedText:
    """Text frames of a process here taken for an arriving one, before its regions map them
    (then `mapped`: its regions let them go like any frames)."""

    frames: npt.NDArray[np.int64]
    mapped: bool = False


def text_holder(processes: Iterable[Process], kernel_space: VirtualSpace, memory: RealMemory,
                program_digest: str, digest: str) -> HeldText | None:
    """The text areas and their present frames (in area order) of one of `processes` (the
    machine's, running, frozen or arriving; its lock held) whose text has `digest`; None if
    there is none. Text that may be written is never shared."""
    for q in processes:
        if q.program is None or q.program.digest != program_digest or (
                q.space is None or q.space is kernel_space):
            continue
        areas: list[AreaImage] = []
        parts: list[npt.NDArray[np.int64]] = []
        for us in q.space.user_spaces:  # in address order, as the source's
            region = us.region
            if region is None or region.kind is not RegionKind.TEXT:
                continue
            frames = region.frame_array()
            present = np.flatnonzero(frames != NOT_PRESENT)
            areas.append(AreaImage("", region.kind, us.start, region.npages, us.perms,
                                   tuple(present.tolist())))
            parts.append(frames[present])
        if not areas or any(a.perms & PROT_WRITE for a in areas):
            continue
        held = np.concatenate(parts)
        if text_digest(program_digest, areas, memory.frames[held]) == digest:
            return areas, held
    return None


def pin_text(holder: HeldText | None, image: ProcessImage, memory: RealMemory,
             machine: str) -> PinnedText:
    """The frames of the process here with the image's text (`holder`, found under the
    machine's lock, still held), taken as one more mapper's, so they stay whatever that
    process does meanwhile. TextNotHeldError if it is gone or its areas differ: the source
    then sends the text after all."""
    if holder is None:
        raise TextNotHeldError(f"{machine} no longer holds the text of {image.program.name} "
                               "(the process that had it ended)")
    areas, frames = holder
    if [(a.start, a.npages, a.present) for a in areas] != [
            (a.start, a.npages, a.present) for a in image.text_areas]:
        raise TextNotHeldError(f"text areas of process {image.pid} do not match the text "
                               f"{machine} holds")
    memory.share(frames)
    return PinnedText(frames)


def share_text(p: Process, image: ProcessImage, pinned: PinnedText,
               add_area: Callable[[Process, AreaImage], VirtualUserSpace]) -> None:
    """Transform (II) without a copy: map the pinned frames read-only into the arriving
    process, in areas made by `add_area`; each frame is freed only when the last process
    that maps it lets it go (`RealMemory.share`)."""
    assert p.space is not None
    frames = pinned.frames
    pinned.mapped = True  # from here the arriving process's regions own this mapping
    done = 0
    for area in image.text_areas:
        us = add_area(p, area)
        assert us.region is not None
        indexes = np.fromiter(area.present, dtype=np.int64, count=len(area.present))
        mine = frames[done: done + indexes.size]
        done += indexes.size
        region_frames = np.full(area.npages, NOT_PRESENT, dtype=np.int64)
        region_frames[indexes] = mine
        us.region.frames = region_frames.tolist()
        p.space.add_entries(us, indexes, mine)
