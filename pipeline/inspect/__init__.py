"""The inspect stage: a one-screen summary of a workspace and the HTML report.
"""
