"""The real-vs-fake perceptual study of the paper (Isola et al. 2017, §4.1), run by a user.

page.py writes a self-contained study folder from results folders (index.html + study.json + images/), server.py
serves it and appends each observer's session to answers.jsonl, report.py turns that file into "% judged real"
per model with 95% Wilson intervals.
"""
