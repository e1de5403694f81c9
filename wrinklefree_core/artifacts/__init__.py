"""What stages read and write, below the stages themselves: where an artifact goes (io.py), its
stage.json (manifest.py), the refusal to replace finished work (output_guard.py), and the result
every stage returns (result.py). Training and evaluation import these; nothing here imports a stage.
"""
