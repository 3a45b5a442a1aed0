"""Code shared by the edge node and the cloud service: config, audio front end, tokenizer, wire schemas, signing.

Nothing here imports torch or does I/O at import time.
"""
