"""Is an artifact worth shipping: held-out perplexity, size on disk, llama.cpp speed, and the baselines beside it.

    perplexity.py   held-out perplexity of a teacher, a checkpoint or a GGUF (llama.cpp), on the same rows
    ptq.py          llama.cpp's own quantization of the teacher (F16, Q4_0, Q2_K, ...): the user's alternative
    size.py         bytes on disk (adapter counted) and bits per weight
    speed.py        prompt and decode tok/s of several GGUFs, timed in one run
    value_table.py  the table that puts them side by side, and its one-line verdict
    compare.py      all of it for one GGUF (`wrinklefree eval checkpoint=FILE.gguf`)

Nothing here imports Prefect; tasks/ wraps these as cached Prefect tasks for the pipeline.
"""
