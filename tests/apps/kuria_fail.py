#!/usr/bin/env python3
"""A Kuria-protocol app that cannot start: it explains why in response/error/ and writes '0'."""
import os
import time

work = os.environ["PASSENGER_SPAWN_WORK_DIR"]
error = os.path.join(work, "response", "error")
with open(os.path.join(error, "category"), "w") as f:
    f.write("IO_ERROR")
with open(os.path.join(error, "summary"), "w") as f:
    f.write("cannot reach the database at db.internal:5432")
with open(os.path.join(error, "problem_description.txt"), "w") as f:
    f.write("The <app> needs its database & it did not answer.")
with open(os.path.join(error, "solution_description.html"), "w") as f:
    f.write("<p>Start the <b>database</b>, then restart the app.</p>")
print("giving up: no database", flush=True)
with open(os.path.join(work, "response", "finish"), "w") as f:
    f.write("0")
time.sleep(30)  # the server kills it
