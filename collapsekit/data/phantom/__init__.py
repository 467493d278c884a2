"""A procedural abdominal CT phantom with BTCV labels, in memory or written in real on-disk layouts.

Every command of collapsekit runs on this phantom without a download. One case is an axial stack of
an upper-abdomen CT in Hounsfield units: an elliptical body with skin, subcutaneous fat and a muscle
wall around visceral fat; liver (patient's right), spleen, both kidneys with their sinus fat,
adrenals, stomach with an air pocket, gallbladder, pancreas, portal and splenic veins, aorta and
IVC anterior to the spine, oesophagus near the hiatus, a vertebral column with cortical bone,
intervertebral discs and posterior elements, paraspinal and psoas muscles, ribs and bowel loops. The
organs are smooth 3D shapes (ellipses whose centre, axes, rotation and angular harmonics vary
smoothly with height), so neighbouring slices look alike; each case varies body size, fat, organ
position, size and shape. Noise is spatially correlated Gaussian (10-18 HU), as in filtered
back-projection CT.

Geometry: the array is ``(H, W, Z)`` in RAS orientation -- index 0 increases towards the patient's
Right, index 1 towards Anterior, index 2 towards Superior -- and the affine is
``diag(400/size, 400/size, 150/slices)`` mm (a 400 mm field of view and 150 mm of abdomen, e.g.
3.125 mm in plane and 3.125 mm between slices for 128x128x48; 0.78 mm in plane at size 512), centred
on the origin. Shown in radiological convention (see :func:`collapsekit.data.volume.radiological_view`)
the liver is on the left of the image and the spine at the bottom.

HU values (portal-venous phase, typical of BTCV): air -1000, fat -100..-80, muscle 50, liver 60,
spleen 50, kidney 160, pancreas 90, aorta 170-230, IVC/portal vein 120-160, bile 10, cancellous bone
200-300, cortical bone 700-1000.
"""

from __future__ import annotations

from collapsekit.data.phantom.generate import generate_phantom
from collapsekit.data.phantom.write import PHANTOM_LAYOUTS, write_phantom_dataset
from collapsekit.data.spec import PhantomConfig

__all__ = ["PhantomConfig", "PHANTOM_LAYOUTS", "generate_phantom", "write_phantom_dataset"]
