from tests.security.support import pki  # noqa: F401 - the throwaway CA fixture for every security test
