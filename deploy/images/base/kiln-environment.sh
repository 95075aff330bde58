# Kiln: the user's environment first on PATH in login shells too.
# /etc/profile sets PATH afresh, so a login shell (JupyterLab's terminal, `bash -l`, ssh) would
# lose the environment the image's ENV put first; KILN_ENV_PATH (set in the image) names it.
if [ -n "${KILN_ENV_PATH:-}" ]; then
  case ":$PATH:" in
    *":$KILN_ENV_PATH:"*) ;;
    *) PATH="$KILN_ENV_PATH:$PATH" ;;
  esac
  export PATH
fi
