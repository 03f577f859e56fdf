"""`fastpix data`: data sets (today the built-in demo set)."""
from __future__ import annotations

from fastpix.cli.flags import build_config, subcommand
from fastpix.config import DemoDataConfig


def cmd_data_demo(args):
    """Write the built-in demo data set: aligned A|B pairs in train/, val/ and test/ (no download)."""
    from fastpix.data.demo import write_demo_dataset

    cfg = build_config(DemoDataConfig, vars(args))
    write_demo_dataset(cfg.out, cfg.size, {"train": cfg.train, "val": cfg.val, "test": cfg.test}, cfg.seed)
    print(f"fastpix data: demo data set written to {cfg.out} (train {cfg.train}, val {cfg.val}, test {cfg.test})")


def register(sub):
    p = sub.add_parser("data", help="data sets: `fastpix data demo --out DIR` writes the built-in demo set",
                       allow_abbrev=False)
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="WHAT")
    subcommand(data_sub, "demo", cmd_data_demo, "write the built-in demo data set (aligned A|B, train/val/test)",
               (DemoDataConfig, "demo data"))
