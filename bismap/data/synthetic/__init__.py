"""Procedural street scenes with a controllable synthetic-to-real style domain shift.

Both domains share the scene grammar (perspective road, sidewalks, building facades, objects
standing on the ground plane), so shape and context transfer; the per-class colours do not
(palette blend + per-class hue rotation), which is what makes the gap (design.md). Texture,
illumination, blur, noise, object sizes and class frequencies shift too, more mildly.

Config slice `synthetic` (every knob, with defaults in DEFAULTS):
  preset ("default")     scene kind: "default" (city street, scene.py) or "suburb" (a residential
                         street of another kind: camera, road, buildings, objects, lighting; suburb.py)
  seed (0)               master seed; image i of domain d uses SeedSequence([seed, d, i]), so
                         output is identical for any number of workers
  height, width (128, 256) image size
  n_source (300)         source images (GTA5 layout)
  n_target_train (300)   target train images (Cityscapes layout, split 'train')
  n_target_val (100)     target val images (split 'val')
  workers (2)            worker processes writing images (1 = in-process)
  compress_level (1)     PNG zlib level (1 = fast; output bytes depend on it)
  train_cities / val_cities  fake city names used in Cityscapes file names
  color_jitter (0.12)    per-instance colour variation inside a domain (things get 2.5x)
  small_object_scale (1.4)  size multiplier for poles, signs, lights, persons, riders, bikes
  object_rates           SOURCE mean count per image (Poisson) of car, person, rider (on a bicycle
                         or motorcycle), pole (with sign/light), truck, bus, train, tree; for
                         fence, wall, terrain: probability per road side
  target_rate_factors    TARGET-only multipliers of object_rates (all 1: no label shift; the label_shift
                         benchmark preset, configs/synthetic_label_shift.yaml, sets them)
  shift.palette_blend (0.35)  target class colour = (1-b)*base + b*random colour
  shift.hue_rotation (30)     max |per-class hue rotation| in degrees for the target
  shift.saturation (1.3)      source colours are saturated by this factor ("game-like")
  shift.texture (0.5)         target texture change: pattern periods x(1+t), noise amplitude x(1+2t)
  shift.illumination (0.25)   target global gain / gradient / colour-temperature range
  shift.blur (0.7)            target Gaussian blur radius in pixels (0 = none)
  shift.noise (4.0)           target sensor noise std (0..255 scale)
  shift.object_scale (0.85)   target object size multiplier
  shift.class_frequency (0.4) target object rates x exp(cf * z_c), z_c in [-1, 1] fixed per seed
  shift.ego_hood (0.07)       target ego-vehicle hood height (fraction of H; labelled void id 1)

Modules: `config` (defaults, class ids, validation), `scene` (the layout: road, facades, objects,
as a trainId map with per-instance colours), `suburb` (the suburb preset's layout), \
`appearance` (domain palettes and rendering:
texture, lighting, blur, noise), `writer` (one image per (seed, domain, index); the GTA5 and
Cityscapes file layouts on disk).
"""
from bismap.data.synthetic.appearance import domain_style, render
from bismap.data.synthetic.config import DEFAULTS, DOMAINS, EGO_VEHICLE_ID, PRESETS, resolve_config
from bismap.data.synthetic.scene import make_scene
from bismap.data.synthetic.writer import generate, trainids_to_ids, write_benchmark

__all__ = ["DEFAULTS", "DOMAINS", "EGO_VEHICLE_ID", "PRESETS", "domain_style", "generate", "make_scene", "render",
           "resolve_config", "trainids_to_ids", "write_benchmark"]
