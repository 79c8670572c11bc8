"""The project-wide joint order (LSP, 14 joints), its left/right pairs, limbs and the paper's part groups."""

JOINT_NAMES = (
    "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle",
    "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist",
    "neck", "head_top",
)
NUM_JOINTS = len(JOINT_NAMES)
JOINT_INDEX = {name: i for i, name in enumerate(JOINT_NAMES)}

# Index of each joint's mirror image: a horizontal flip relabels joint i as FLIP_PERMUTATION[i].
FLIP_PERMUTATION = tuple(
    JOINT_INDEX[("l_" + n[2:]) if n.startswith("r_") else ("r_" + n[2:]) if n.startswith("l_") else n]
    for n in JOINT_NAMES)

# Bones for drawing skeletons, as (joint, joint) index pairs.
LIMBS = tuple((JOINT_INDEX[a], JOINT_INDEX[b]) for a, b in (
    ("r_ankle", "r_knee"), ("r_knee", "r_hip"), ("l_ankle", "l_knee"), ("l_knee", "l_hip"),
    ("r_hip", "l_hip"), ("r_wrist", "r_elbow"), ("r_elbow", "r_shoulder"),
    ("l_wrist", "l_elbow"), ("l_elbow", "l_shoulder"), ("r_shoulder", "l_shoulder"),
    ("r_shoulder", "r_hip"), ("l_shoulder", "l_hip"), ("neck", "head_top"),
))

# The paper's PCK groups: each is the mean over its joints.
PART_GROUPS = {
    "head": ("head_top", "neck"),
    "shoulder": ("r_shoulder", "l_shoulder"),
    "elbow": ("r_elbow", "l_elbow"),
    "wrist": ("r_wrist", "l_wrist"),
    "hip": ("r_hip", "l_hip"),
    "knee": ("r_knee", "l_knee"),
    "ankle": ("r_ankle", "l_ankle"),
}

# The PCK normaliser of LSP and FLIC: ground-truth left shoulder to right hip.
TORSO = (JOINT_INDEX["l_shoulder"], JOINT_INDEX["r_hip"])
