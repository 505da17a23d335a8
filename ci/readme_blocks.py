"""Write each runnable README command to its own file for ci/wheel_check.sh: every `metaexp ...` or `torchrun ...`
line of a ```bash block (a train command gets debug=fast appended) and every ```python block."""

import re
import sys
from pathlib import Path

readme, out = Path(sys.argv[1]).read_text(), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
count = 0
for language, body in re.findall(r"```(bash|python)\n(.*?)```", readme, flags=re.S):
    if language == "python":
        count += 1
        (out / f"{count:03d}.py").write_text(body)
        continue
    for line in body.splitlines():
        command = line.split("  #")[0].strip()
        if not command.startswith(("metaexp ", "torchrun ")):
            continue
        if " train" in command and "--cfg" not in command and "--help" not in command:
            command += " debug=fast"
        count += 1
        (out / f"{count:03d}.sh").write_text(command + "\n")
print(f"{count} README commands", file=sys.stderr)
