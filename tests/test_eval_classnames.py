"""The class lists equal the official IFSeg run scripts' ``category_list`` strings (alinlab/ifseg@77c075c).

The digests are sha256 of each script's exact ``category_list='...'`` value (ade.sh, coco_fine.sh,
coco_unseen.sh); joining our lists with ", " must reproduce those bytes.
"""

from __future__ import annotations

import hashlib

import pytest

from ifseg_deploy.evaluation import classnames as cn


@pytest.mark.parametrize("names, count, digest", [
    (cn.ADE20K_150, 150, "22babeee73b86d93ca967a5eb139bba6c6aaa80e7ab61d4f240a4c6cde73c733"),
    (cn.COCO_STUFF_171, 171, "c37cf07d9cfb7f2406fca3efb60172b6eed2b9ee4dcc21c19721dfa33658323f"),
    (cn.COCO_STUFF_15_UNSEEN, 15, "fd34f6702c6f401d01181b6176d032bae70c9af112ceb0b3f8c797169ec59afb"),
])
def test_class_lists_match_the_official_scripts(names, count, digest):
    assert len(names) == count
    assert hashlib.sha256(", ".join(names).encode()).hexdigest() == digest
