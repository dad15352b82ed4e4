"""The paper's analyses, on any model pair: the likelihood evidence for WSD's premise
(`positions`) and where its switches fall (`switch_stages`), as tables and figures."""
