"""qcompile's Relax passes (the directory keeps the design card's name; TVM's graph IR is
Relax now). One pass per file; `pipeline.py` holds their order."""
