"""Class-name lists of the evaluation datasets, in label-id order.

These equal the category lists of the official IFSeg run scripts (``run_scripts/IFSeg/ade.sh``,
``coco_fine.sh``, ``coco_unseen.sh`` in alinlab/ifseg@77c075c; compared name by name), which use the
mmsegmentation class orders with readable COCO-Stuff names ("concrete wall" for mmseg's "wall-concrete",
"other floor" for "floor-other"). Name matching in ``eval``
is forgiving on purpose (case, spaces, and the mmseg spellings are accepted as aliases), so a model adapted
with either spelling evaluates.
"""

from __future__ import annotations

# ADE20K (ADEChallengeData2016), 150 classes; id k-1 = raw annotation value k (raw 0 = "other" = ignored).
ADE20K_150 = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
]

# COCO-Stuff 171 classes in mmsegmentation's spelling (COCOStuffDataset.CLASSES), train-id order.
COCO_STUFF_171_MMSEG = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush", "banner", "blanket", "branch", "bridge", "building-other",
    "bush", "cabinet", "cage", "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes",
    "clouds", "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit",
    "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves", "light", "mat", "metal",
    "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow", "plant-other",
    "plastic", "platform", "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug",
    "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone",
    "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable", "wall-brick",
    "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other",
    "waterdrops", "window-blind", "window-other", "wood",
]

# The readable names IFSeg's scripts give the "-other"/"-stuff" and "wall-"/"floor-" stuff classes.
_READABLE = {
    "building-other": "building", "ceiling-other": "ceiling", "ceiling-tile": "ceiling tile",
    "desk-stuff": "desk", "door-stuff": "door", "floor-marble": "marble floor", "floor-other": "other floor",
    "floor-stone": "stone floor", "floor-tile": "tile floor", "floor-wood": "wood floor", "food-other": "food",
    "furniture-other": "furniture", "ground-other": "ground", "mirror-stuff": "mirror", "plant-other": "plant",
    "sky-other": "sky", "solid-other": "solid", "structural-other": "structural", "textile-other": "textile",
    "wall-brick": "brick wall", "wall-concrete": "concrete wall", "wall-other": "other wall",
    "wall-panel": "panel wall",
    "wall-stone": "stone wall", "wall-tile": "tile wall", "wall-wood": "wood wall", "water-other": "water",
    "window-blind": "blind window", "window-other": "other window",
}

#: COCO-Stuff 171 classes as the IFSeg scripts name them, train-id order.
COCO_STUFF_171 = [_READABLE.get(n, n) for n in COCO_STUFF_171_MMSEG]

#: The 15 unseen COCO-Stuff classes of the paper's Table 1 (``coco_unseen.sh``), in that script's order.
COCO_STUFF_15_UNSEEN = [
    "frisbee", "skateboard", "cardboard", "carrot", "scissors", "suitcase", "giraffe", "cow", "road",
    "concrete wall", "tree", "grass", "river", "clouds", "playingfield",
]

#: Raw stuffthingmaps values (0-based COCO category ids; 255 = unlabeled) that no class uses: the 11 ids COCO
#: left unused in 1..182 (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91), minus one.
COCO_UNUSED_RAW_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)

#: Accepted alternative spellings: dataset name -> {official name: [aliases]}.
ALIASES = {
    "coco": {_READABLE.get(n, n): [n] for n in COCO_STUFF_171_MMSEG if n in _READABLE},
}
