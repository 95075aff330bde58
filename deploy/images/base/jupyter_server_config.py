# Kiln's base image: Jupyter server settings for every server started from it.
#
# JupyterLab asks `yarn config` for the npm registry whenever its server extension is imported,
# because Node.js is present: a Node.js process of about 0.45 s on every server start, before the
# server answers. The answer only matters to building JupyterLab and to an npm extension manager,
# which run as processes of their own (`jupyter lab build`, `jupyter labextension`) and ask yarn
# there. The server itself skips the question.
try:
    import jupyterlab.commands as _lab_commands
except ImportError:  # an environment without JupyterLab
    pass
else:
    if hasattr(_lab_commands, "_yarn_config"):
        _lab_commands._yarn_config = lambda logger=None: {"yarn config": {}, "npm config": {}}
