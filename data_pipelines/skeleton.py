"""Joint orders: names, left/right mirror pairs, limbs to draw, the paper's PCK groups, and the
torso that normalises PCK. `LSP` (14 joints) is the project-wide order (LSP, LSPET, MPII mapped,
synthetic); `FLIC` is the release's 9-part FLIC model. Joint names start with `r_`/`l_` for sides.
"""
import dataclasses


@dataclasses.dataclass(frozen=True)
class Skeleton:
    joint_names: tuple[str, ...]
    limbs: tuple[tuple[str, str], ...]           # bones for drawing, by joint name
    part_groups: dict[str, tuple[str, ...]]      # the paper's PCK groups: mean over their joints
    torso: tuple[str, str] = ("l_shoulder", "r_hip")  # PCK normaliser (LSP, FLIC)

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @property
    def index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.joint_names)}

    @property
    def flip_permutation(self) -> tuple[int, ...]:
        """A horizontal flip relabels joint i as flip_permutation[i] (left <-> right)."""
        def mirror(n):
            return "l_" + n[2:] if n.startswith("r_") else "r_" + n[2:] if n.startswith("l_") else n
        return tuple(self.index[mirror(n)] for n in self.joint_names)

    @property
    def limb_indices(self) -> tuple[tuple[int, int], ...]:
        return tuple((self.index[a], self.index[b]) for a, b in self.limbs)

    @property
    def torso_indices(self) -> tuple[int, int]:
        return self.index[self.torso[0]], self.index[self.torso[1]]


LSP = Skeleton(
    joint_names=("r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle",
                 "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist",
                 "neck", "head_top"),
    limbs=(("r_ankle", "r_knee"), ("r_knee", "r_hip"), ("l_ankle", "l_knee"), ("l_knee", "l_hip"),
           ("r_hip", "l_hip"), ("r_wrist", "r_elbow"), ("r_elbow", "r_shoulder"),
           ("l_wrist", "l_elbow"), ("l_elbow", "l_shoulder"), ("r_shoulder", "l_shoulder"),
           ("r_shoulder", "r_hip"), ("l_shoulder", "l_hip"), ("neck", "head_top")),
    part_groups={"head": ("head_top", "neck"), "shoulder": ("r_shoulder", "l_shoulder"),
                 "elbow": ("r_elbow", "l_elbow"), "wrist": ("r_wrist", "l_wrist"),
                 "hip": ("r_hip", "l_hip"), "knee": ("r_knee", "l_knee"),
                 "ankle": ("r_ankle", "l_ankle")},
)

FLIC = Skeleton(
    joint_names=("l_shoulder", "l_elbow", "l_wrist", "r_shoulder", "r_elbow", "r_wrist",
                 "l_hip", "r_hip", "nose"),
    limbs=(("l_shoulder", "l_elbow"), ("l_elbow", "l_wrist"), ("r_shoulder", "r_elbow"),
           ("r_elbow", "r_wrist"), ("l_shoulder", "r_shoulder"), ("l_shoulder", "l_hip"),
           ("r_shoulder", "r_hip"), ("l_hip", "r_hip")),
    part_groups={"shoulder": ("r_shoulder", "l_shoulder"), "elbow": ("r_elbow", "l_elbow"),
                 "wrist": ("r_wrist", "l_wrist"), "hip": ("r_hip", "l_hip"), "head": ("nose",)},
)

# The project-wide order, for code that is about LSP-ordered joints only.
JOINT_NAMES = LSP.joint_names
NUM_JOINTS = LSP.num_joints
JOINT_INDEX = LSP.index
FLIP_PERMUTATION = LSP.flip_permutation
