"""Fixed episode sets: JSON files that name the support and query examples of each episode, so that
checkpoints are compared on identical episodes and published episode lists can be replayed.

Format (`"format": "metaexp-episodes/1"`): `{"split": ..., "episodes": [{"support": [ENTRY, ...],
"query": [ENTRY, ...]}, ...]}` where ENTRY is `[ref, label]` or `[ref, label, degrees]`: `ref` is a row index
into the split (classes in the split's order, then examples in file order) or an image path relative to the
JSON file, `label` is 0..ways-1, `degrees` a multiple of 90 to rotate the image by.
"""

import json
from pathlib import Path

from metaexp.errors import MetaexpError

FORMAT = "metaexp-episodes/1"


def write_episodes(path: Path, draws: list, shots: int, split: str) -> None:
    """Save the episodes of `draws`, a list of (rows `[B, ways, shots+queries]`, quarter turns `[B, ways]`)."""
    episodes = []
    for rows, quarters in draws:
        for task_rows, task_quarters in zip(rows.tolist(), quarters.tolist()):
            entries = [
                [[row, label, 90 * turns] for row in class_rows]
                for label, (class_rows, turns) in enumerate(zip(task_rows, task_quarters))
            ]
            episodes.append(
                {"support": [e for c in entries for e in c[:shots]], "query": [e for c in entries for e in c[shots:]]}
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": FORMAT, "split": split, "episodes": episodes}) + "\n")


def load_episodes(path: Path) -> list:
    """The episodes of a file, each checked: non-empty `support` and `query` lists of entries with whole-number
    labels 0..n-1, every label of the episode present in its support set, the same n in every episode."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
        episodes = document["episodes"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise MetaexpError(
            f"{path} is not a readable episode file ({type(error).__name__}: {error}). See the "
            f"format in metaexp/episodes.py, or write one with eval.save_episodes=PATH."
        ) from error
    if not isinstance(episodes, list) or not episodes:
        raise MetaexpError(f"{path} lists no episodes: `episodes` must be a non-empty list.")
    for number, episode in enumerate(episodes):
        check_episode(path, number, episode)
    ways = {len({e[1] for e in episode["support"]}) for episode in episodes}
    if len(ways) > 1:
        raise MetaexpError(f"{path} mixes episodes of {sorted(ways)} classes; one file holds one N-way setting.")
    return episodes


def check_episode(path: Path, number: int, episode) -> None:
    where = f"{path}: episode {number}"
    if not isinstance(episode, dict) or any(
        not isinstance(episode.get(n), list) or not episode[n] for n in ("support", "query")
    ):
        raise MetaexpError(
            f"{where} needs non-empty `support` and `query` lists of [ref, label] or [ref, label, degrees] entries."
        )
    for entry in episode["support"] + episode["query"]:
        if not isinstance(entry, list) or len(entry) not in (2, 3):
            raise MetaexpError(f"{where}: {entry!r} is not an entry [ref, label] or [ref, label, degrees].")
        if not isinstance(entry[1], int) or isinstance(entry[1], bool) or entry[1] < 0:
            raise MetaexpError(f"{where}: the label {entry[1]!r} of {entry!r} is not a class number 0, 1, 2, ...")
        if len(entry) == 3 and (not isinstance(entry[2], int) or entry[2] % 90):
            raise MetaexpError(f"{where}: rotation {entry[2]!r} is not a multiple of 90 degrees.")
        check_reference(where, Path(path).parent, entry[0])
    support = {e[1] for e in episode["support"]}
    if support != set(range(len(support))) or not {e[1] for e in episode["query"]} <= support:
        raise MetaexpError(
            f"{where}: its labels must be 0..N-1 with at least one support example each (support "
            f"has {sorted(support)}, query has {sorted({e[1] for e in episode['query']})}); a class "
            f"without support examples cannot be learned from the episode."
        )


def check_reference(where: str, folder: Path, ref) -> None:
    """An entry names a row of the split or an image file inside the episode file's folder: a file passed on
    by someone else must not read `../../elsewhere`, an absolute path, a FIFO (it would hang) or /dev/zero."""
    if isinstance(ref, int) and not isinstance(ref, bool):
        return
    if not isinstance(ref, str):
        raise MetaexpError(f"{where}: {ref!r} is neither a row number nor an image path.")
    image = (folder / ref).resolve()
    if not image.is_relative_to(folder.resolve()):
        raise MetaexpError(
            f"{where}: the image {ref!r} lies outside the episode file's folder {folder}; an episode file names "
            f"images by paths relative to its own folder, below it."
        )
    if not image.is_file():
        raise MetaexpError(f"{where}: the image {ref!r} is not a file in {folder}.")


def ways_of(episodes: list) -> int:
    """The N of the N-way episodes in a checked file."""
    return len({e[1] for e in episodes[0]["support"]})
